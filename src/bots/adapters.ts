// The configured chat adapters, started side by side. One that cannot connect (Discord unreachable, a network
// hiccup) is reported in one line and retried with backoff while the others serve; one whose credentials are
// refused is reported and left off; a port another program holds is a configuration problem and stops the start.
import type { ChatAdapter, ChatAdapterEnvironment, ChatAdapterFactory } from "../plugins.js";

export interface ChatAdaptersOptions {
  log: (line: string) => void;
  /** The first retry's delay, doubled after each failure up to `maxBackoffMs`. Defaults 5 s and 5 min. */
  backoffMs?: number;
  maxBackoffMs?: number;
}

export type AdapterState = "starting" | "running" | "retrying" | "failed" | "stopped";

export interface AdapterStatus {
  name: string;
  state: AdapterState;
  /** Why the last start failed, while retrying or failed. */
  error?: string;
}

/** The adapter could not listen on its port: no retry will help until the configuration changes. */
export class AdapterPortError extends Error {
  override readonly name = "AdapterPortError";
  readonly code = "adapter-port";
}

// Listening errors: another program holds the port, or the address is not this machine's / not allowed.
const PORT_ERRORS = new Set(["EADDRINUSE", "EACCES", "EADDRNOTAVAIL"]);
// Credentials the platform refused (discord.js's TokenInvalid, Slack's invalid_auth): retrying cannot help.
const CREDENTIAL_ERRORS = new Set(["TokenInvalid", "DisallowedIntents", "slack_webapi_platform_error:invalid_auth",
  "invalid_auth", "not_authed", "account_inactive"]);

class ManagedAdapter {
  state: AdapterState = "starting";
  error: string | undefined;
  adapter: ChatAdapter | undefined;
  private failures = 0;
  private timer: NodeJS.Timeout | undefined;

  /** `first` is the adapter the factory made when asked whether it is configured; retries get fresh ones. */
  constructor(readonly factory: ChatAdapterFactory, private readonly environment: ChatAdapterEnvironment,
    private first: ChatAdapter | undefined, private readonly options: Required<ChatAdaptersOptions>) {}

  /** Start once; a port problem rejects, any other failure is reported and retried in the background. */
  async start(): Promise<void> {
    const adapter = this.first ?? this.factory.create(this.environment);
    this.first = undefined;
    if (this.state === "stopped" || !adapter) return;
    this.adapter = adapter;
    try {
      await adapter.start();
      if (this.isStopped()) return void await adapter.stop().catch(() => undefined);
      if (this.failures > 0) this.options.log(`[host] chat adapter ${this.factory.name} connected after ${this.failures} failed attempt(s)`);
      this.state = "running";
      this.error = undefined;
    } catch (error) {
      await adapter.stop().catch(() => undefined);
      this.adapter = undefined;
      const code = String((error as { code?: unknown }).code ?? "");
      const message = error instanceof Error ? error.message : String(error);
      if (PORT_ERRORS.has(code)) throw new AdapterPortError(`chat adapter ${this.factory.name} could not listen: ${message}`, { cause: error });
      this.error = message;
      if (CREDENTIAL_ERRORS.has(code) || CREDENTIAL_ERRORS.has(message)) {
        this.state = "failed";
        this.options.log(`[host] chat adapter ${this.factory.name} was refused (${message}); check its token. The other chats keep serving`);
        return;
      }
      const delay = Math.min(this.options.maxBackoffMs, this.options.backoffMs * 2 ** this.failures);
      this.failures += 1;
      this.state = "retrying";
      this.options.log(`[host] chat adapter ${this.factory.name} could not start (${message}); retrying in ${Number((delay / 1000).toFixed(1))} s`);
      this.timer = setTimeout(() => void this.start().catch((retryError: unknown) => {
        this.state = "failed";
        this.options.log(`[host] ${retryError instanceof Error ? retryError.message : String(retryError)}`);
      }), delay);
    }
  }

  /** Read after an await: `stop` may have been called meanwhile. */
  private isStopped(): boolean {
    return this.state === "stopped";
  }

  async stop(): Promise<void> {
    this.state = "stopped";
    clearTimeout(this.timer);
    await this.adapter?.stop();
  }
}

export class ChatAdapters {
  private readonly managed: ManagedAdapter[] = [];

  constructor(private readonly factories: ChatAdapterFactory[], private readonly environment: ChatAdapterEnvironment,
    private readonly options: ChatAdaptersOptions) {}

  /** Start every configured adapter; resolves once each is running or retrying. Rejects (stopping the started
   *  ones) when none is configured or one cannot listen on its port. */
  async start(): Promise<void> {
    const settings = { backoffMs: 5_000, maxBackoffMs: 300_000, ...this.options };
    for (const factory of this.factories) {
      const adapter = factory.create(this.environment);
      if (!adapter) {
        this.options.log(`[host] chat adapter ${factory.name} is not configured; skipping it`);
        continue;
      }
      this.managed.push(new ManagedAdapter(factory, this.environment, adapter, settings));
    }
    if (this.managed.length === 0) throw new Error("no chat adapter is enabled (web.enabled is false and no other is configured)");
    const started = await Promise.allSettled(this.managed.map((adapter) => adapter.start()));
    const failure = started.find((outcome): outcome is PromiseRejectedResult => outcome.status === "rejected");
    if (failure) {
      await this.stop();
      throw failure.reason;
    }
  }

  /** The adapters running now. */
  running(): ChatAdapter[] {
    return this.managed.flatMap((entry) => entry.state === "running" && entry.adapter ? [entry.adapter] : []);
  }

  status(): AdapterStatus[] {
    return this.managed.map((entry) => ({ name: entry.factory.name, state: entry.state, ...(entry.error ? { error: entry.error } : {}) }));
  }

  async stop(): Promise<void> {
    await Promise.all(this.managed.map((entry) => entry.stop()));
  }
}
