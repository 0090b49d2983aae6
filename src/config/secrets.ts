// Secrets come only from the environment and are kept out of the Config object, so logging or echoing the
// config can never leak one; `describe` shows which are set without their values.

export const SECRET_VARIABLES = {
  discordToken: "DISCORD_TOKEN",
  slackBotToken: "SLACK_BOT_TOKEN",
  slackSigningSecret: "SLACK_SIGNING_SECRET",
  slackAppToken: "SLACK_APP_TOKEN",
  civitaiApiKey: "CIVITAI_API_KEY",
  huggingfaceToken: "HF_TOKEN",
  workerToken: "AUTOLORA_WORKER_TOKEN",
  redisPassword: "AUTOLORA_REDIS_PASSWORD",
} as const;

export type SecretName = keyof typeof SECRET_VARIABLES;

export class Secrets {
  readonly #values: Partial<Record<SecretName, string>>;

  constructor(env: Record<string, string | undefined>) {
    this.#values = {};
    for (const [name, variable] of Object.entries(SECRET_VARIABLES) as Array<[SecretName, string]>) {
      const value = env[variable]?.trim();
      if (value) this.#values[name] = value;
    }
  }

  get(name: SecretName): string | undefined {
    return this.#values[name];
  }

  /** The secret, or an error naming the variable to set and what needs it. */
  require(name: SecretName, purpose: string): string {
    const value = this.#values[name];
    if (value === undefined) throw new Error(`${purpose} needs ${SECRET_VARIABLES[name]} set in the environment`);
    return value;
  }

  /** Which secrets are set, e.g. for a startup log line; never the values. */
  describe(): Record<string, "set" | "unset"> {
    return Object.fromEntries(Object.entries(SECRET_VARIABLES).map(([name, variable]) =>
      [variable, this.#values[name as SecretName] === undefined ? "unset" : "set"]));
  }

  toJSON(): Record<string, "set" | "unset"> {
    return this.describe();
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `Secrets ${JSON.stringify(this.describe())}`;
  }
}
