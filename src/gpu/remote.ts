// Workers the host did not start: URLs of workers running elsewhere (another GPU host), health-checked on an
// interval so the dispatcher only sends jobs to those that answer. Also the union of several worker sources.
import type { WorkerBackend } from "./backend.js";
import { createWorkerClient } from "./client.js";
import type { WorkerSource } from "./dispatch.js";

export interface RemoteWorkersOptions {
  urls: string[];
  /** The shared bearer token of the remote workers (AUTOLORA_WORKER_TOKEN). */
  token: string;
  /** Health-check interval. Default 5 s. */
  intervalMs?: number;
  jobTimeoutMs?: number;
  fetch?: typeof fetch;
}

export class RemoteWorkers implements WorkerSource {
  private readonly backends: WorkerBackend[];
  private readonly healthy = new Set<string>();
  private readonly intervalMs: number;
  private timer: NodeJS.Timeout | undefined;
  private waiters: Array<() => void> = [];

  constructor(options: RemoteWorkersOptions) {
    this.intervalMs = options.intervalMs ?? 5_000;
    this.backends = options.urls.map((url, index) => createWorkerClient({
      url, token: options.token, id: `remote-${index + 1}`, jobTimeoutMs: options.jobTimeoutMs, fetch: options.fetch,
    }));
  }

  /** Check every worker now, then keep checking on the interval until `stop`. */
  async start(): Promise<void> {
    await this.check();
    this.timer = setInterval(() => void this.check(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    for (const wake of this.waiters.splice(0)) wake();
  }

  ready(): WorkerBackend[] {
    return this.backends.filter((backend) => this.healthy.has(backend.id));
  }

  whenAnyReady(timeoutMs: number): Promise<boolean> {
    if (this.ready().length > 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const wake = () => { clearTimeout(timer); resolve(this.ready().length > 0); };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((waiter) => waiter !== wake);
        resolve(false);
      }, timeoutMs);
      this.waiters.push(wake);
    });
  }

  private async check(): Promise<void> {
    await Promise.all(this.backends.map(async (backend) => {
      const ok = await backend.health().then(() => true, () => false);
      if (ok) this.healthy.add(backend.id);
      else this.healthy.delete(backend.id);
    }));
    if (this.healthy.size > 0) for (const wake of this.waiters.splice(0)) wake();
  }
}

/** Several sources as one: local supervised workers and remote ones together. */
export function combineWorkerSources(...sources: WorkerSource[]): WorkerSource {
  return {
    ready: () => sources.flatMap((source) => source.ready()),
    whenAnyReady: async (timeoutMs) => {
      if (sources.some((source) => source.ready().length > 0)) return true;
      const waits = sources.map((source) => source.whenAnyReady(timeoutMs).then((ready) => ready || Promise.reject()));
      return Promise.any(waits).catch(() => false);
    },
  };
}
