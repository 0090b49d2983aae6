// Configuration: the documented defaults load as they are, overrides come from a file and the environment, every
// mistake is reported by key and source, and secrets never reach the config or its printed forms.
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../src/config/load.js";

function problems(env: Record<string, string>): string[] {
  try {
    loadConfig(env);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as ConfigError).problems;
  }
  throw new Error("the configuration was accepted");
}

async function overrideFile(text: string): Promise<string> {
  const file = join(await mkdtemp(join(tmpdir(), "autolora-config-")), "override.yaml");
  await writeFile(file, text);
  return file;
}

describe("configuration", () => {
  it("loads the documented defaults", () => {
    const { config } = loadConfig({});
    expect(config.web).toEqual({
      enabled: true, host: "127.0.0.1", port: 8787, allowed_hosts: [], trusted_proxies: [], session_idle_minutes: 1440, max_sessions: 1000,
    });
    expect(config.retrieval.k).toBe(3);
    expect(config.workers.local).toEqual([{ device: "cpu", model: "proving-ground" }]);
    expect(config.chat.reactions).toEqual({ "👍": 1, "👎": -1, "⭐": 2 });
    expect(config.discord.guild_id).toBe("");
    expect(config.slack).toMatchObject({ mode: "http", port: 3000, path: "/slack/events" });
  });

  it("checks the chat settings: reaction values, Slack's mode, Discord's ids", () => {
    expect(problems({ AUTOLORA_CHAT__REACTIONS: '{"👍": 1, "🙂": 0}' })[0]).toMatch(/^chat\.reactions\.🙂: a rating cannot be 0/);
    expect(problems({ AUTOLORA_CHAT__REACTIONS: '{"👍": 1, "🙂": 1}' })[0]).toMatch(/each reaction needs its own value/);
    expect(problems({ AUTOLORA_SLACK__MODE: "websocket" })[0]).toMatch(/^slack\.mode: .*"socket"/);
    expect(problems({ AUTOLORA_DISCORD__GUILD_ID: "my-server" })[0]).toMatch(/^discord\.guild_id: expected a numeric guild id/);
    expect(loadConfig({ AUTOLORA_ADMINS: '["discord:role:1234", "slack:U01"]' }).config.admins).toEqual(["discord:role:1234", "slack:U01"]);
  });

  it("takes a file's keys, then environment variables, leaving the rest at their defaults", async () => {
    const file = await overrideFile("web:\n  port: 9001\nretrieval:\n  k: 2\n");
    const { config } = loadConfig({
      AUTOLORA_CONFIG: file, AUTOLORA_RETRIEVAL__K: "1", AUTOLORA_ADMINS: '["web:alice", "discord:42"]',
      AUTOLORA_DATA_DIR: "123", AUTOLORA_BUNDLE: "/elsewhere", AUTOLORA_CACHE_DIR: "", PATH: "/bin",
    });
    expect(config.web.port).toBe(9001);
    expect(config.web.host).toBe("127.0.0.1");
    expect(config.retrieval.k).toBe(1);
    expect(config.admins).toEqual(["web:alice", "discord:42"]);
    expect(config.data_dir).toBe("123"); // a string setting keeps the variable's text as it is
  });

  it("names the key, the problem and where the value came from", async () => {
    const file = await overrideFile("queue:\n  per_user: 0\nweb:\n  colour: blue\n");
    expect(problems({ AUTOLORA_WEB__PORT: "99999" })).toEqual([
      expect.stringMatching(/^web\.port: .*65535.* \(from AUTOLORA_WEB__PORT\)$/)]);
    expect(problems({ AUTOLORA_WEB__PROT: "80" })).toEqual([
      "AUTOLORA_WEB__PROT: no setting web.prot (web has: enabled, host, port, allowed_hosts, trusted_proxies, session_idle_minutes, max_sessions)"]);
    expect(problems({ AUTOLORA_WEB__TRUSTED_PROXIES: '["10.0.0.0/8", "proxy.local"]' })).toEqual([
      expect.stringMatching(/^web\.trusted_proxies\.1: expected an address or a CIDR range/)]);
    expect(problems({ AUTOLORA_WEB__ALLOWED_HOSTS: '["https://chat.example.org"]' })).toEqual([
      expect.stringMatching(/^web\.allowed_hosts\.0: expected a host name/)]);
    expect(problems({ AUTOLORA_GENERATION__FUSION: "magic" })[0]).toMatch(/^generation\.fusion: .*"gated"/);
    const fromFile = problems({ AUTOLORA_CONFIG: file });
    expect(fromFile).toContainEqual(expect.stringMatching(new RegExp(`^queue\\.per_user: .* \\(from ${file}\\)$`)));
    expect(fromFile).toContainEqual(expect.stringMatching(/^web: unknown key\(s\) colour/));
    expect(problems({ AUTOLORA_CONFIG: "/no/such/file.yaml" })).toEqual([
      "/no/such/file.yaml: cannot read the config file (ENOENT)"]);
    expect(problems({ AUTOLORA_CONFIG: await overrideFile("web: [unclosed\n") })[0]).toMatch(/not valid YAML at line/);
    expect(problems({ AUTOLORA_QUEUE__PER_USER: "60" })).toEqual([
      "queue.per_user: queue.per_user cannot exceed queue.global (from AUTOLORA_QUEUE__PER_USER)"]);
  });

  it("keeps generation limits within what a worker accepts, naming the limit", () => {
    expect(problems({ AUTOLORA_GENERATION__SEEDS_PER_PROMPT: "9" })).toEqual([
      "generation.seeds_per_prompt: at most 8, the seeds a worker draws in one job (from AUTOLORA_GENERATION__SEEDS_PER_PROMPT)"]);
    expect(loadConfig({ AUTOLORA_GENERATION__SEEDS_PER_PROMPT: "8" }).config.generation.seeds_per_prompt).toBe(8);
    expect(problems({ AUTOLORA_CHAT__MAX_PROMPT_CHARS: "4001" })).toEqual([
      "chat.max_prompt_chars: at most 4000, the longest prompt a worker accepts; a lower value narrows it for chats (from AUTOLORA_CHAT__MAX_PROMPT_CHARS)"]);
    expect(loadConfig({ AUTOLORA_CHAT__MAX_PROMPT_CHARS: "4000" }).config.chat.max_prompt_chars).toBe(4000);
    expect(problems({ AUTOLORA_RETRIEVAL__K: "9" })[0]).toMatch(/^retrieval\.k: at most 8, the LoRAs a worker fuses in one job/);
    expect(problems({ AUTOLORA_GENERATION__STEPS: "201" })[0]).toMatch(/^generation\.steps: at most 200, the sampling steps a worker takes/);
  });

  it("checks every schedule and the time zone when the config is read, naming the key and the value", () => {
    const keys = {
      AUTOLORA_SCHEDULER__CRAWL: "scheduler.crawl", AUTOLORA_SCHEDULER__MAINTENANCE: "scheduler.maintenance",
      AUTOLORA_SCHEDULER__RETRAIN__SCHEDULE: "scheduler.retrain.schedule",
      AUTOLORA_SCHEDULER__RETRAIN__ENCODER_SCHEDULE: "scheduler.retrain.encoder_schedule",
    };
    for (const [variable, key] of Object.entries(keys)) {
      expect(problems({ [variable]: "61 * * * *" })).toEqual([
        `${key}: "61 * * * *" is not a cron schedule (61 is a invalid expression for minute); write minute hour day ` +
        `month weekday, e.g. "0 */6 * * *", or "" for none (from ${variable})`]);
      expect(problems({ [variable]: "every day" })[0]).toMatch(new RegExp(`^${key.replaceAll(".", "\\.")}: "every day" is not a cron schedule \\(expected 5 or 6 fields but got 2\\)`));
      expect(loadConfig({ [variable]: "" }).config).toBeTruthy(); // "" = no schedule: only by hand
      expect(loadConfig({ [variable]: "*/30 * * * * *" }).config).toBeTruthy(); // node-cron's optional seconds field
    }
    expect(problems({ AUTOLORA_SCHEDULER__TIMEZONE: "Mars/Olympus" })).toEqual([
      'scheduler.timezone: "Mars/Olympus" is not an IANA time zone such as Europe/Berlin or UTC; "" is the machine\'s (from AUTOLORA_SCHEDULER__TIMEZONE)']);
    expect(loadConfig({ AUTOLORA_SCHEDULER__TIMEZONE: "Europe/Berlin" }).config.scheduler.timezone).toBe("Europe/Berlin");
  });

  it("refuses secrets in a file and keeps environment secrets out of every printed form", async () => {
    const file = await overrideFile("discord:\n  token: abc.def\n");
    expect(problems({ AUTOLORA_CONFIG: file })[0]).toMatch(/discord\.token looks like a secret; .*DISCORD_TOKEN/);
    const token = "MTIz.very-secret-token";
    const loaded = loadConfig({ DISCORD_TOKEN: token, AUTOLORA_WORKER_TOKEN: "worker-secret" });
    expect(loaded.secrets.get("discordToken")).toBe(token);
    expect(loaded.secrets.require("workerToken", "the worker client")).toBe("worker-secret");
    expect(() => loaded.secrets.require("slackBotToken", "the Slack adapter")).toThrow(
      "the Slack adapter needs SLACK_BOT_TOKEN set in the environment");
    for (const printed of [JSON.stringify(loaded), inspect(loaded, { depth: 5 }), String(loaded.secrets)]) {
      expect(printed).not.toContain("very-secret");
      expect(printed).not.toContain("worker-secret");
    }
    expect(loaded.secrets.describe()).toMatchObject({ DISCORD_TOKEN: "set", SLACK_BOT_TOKEN: "unset" });
  });
});
