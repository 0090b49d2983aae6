// queue.backend: redis. Generation jobs go through BullMQ on Redis and GPU workers anywhere pull them
// (`python -m autolora_worker serve --queue redis://…`, autolora_worker/queue_worker.py), so a worker needs no
// inbound connection and several hosts share the same workers. The order is BullMQ's priority: interactive jobs
// before ingest before training, and within a class a job's priority counts that user's jobs already waiting, so
// users take turns across every host. A worker that dies stops renewing its job's lock and the job goes back in
// line once (BullMQ's stalled-job check, run by every live worker).
import { randomUUID } from "node:crypto";
import { basename } from "node:path";
import { Queue, QueueEvents } from "bullmq";
import { Redis } from "ioredis";
import type { JobClass } from "../pipeline/queue.js";
import type { DispatchGenerateOptions } from "./dispatch.js";
import { JobCancelledError, WorkerJobError, WorkerRequestError, WorkerUnavailableError } from "./errors.js";
import {
  embedManyResultSchema, jobEndEventSchema, jobProgressEventSchema, MAX_EMBED_PATHS, workerHealthSchema,
  type EmbedResult, type GenerateRequest, type JobEndEvent, type WorkerHealth,
} from "./protocol.js";

/** The queue's name and the keys beside it; the Python side (queue_worker.py) uses the same. */
export const GENERATE_QUEUE = "autolora-generate";
const CLASS_BASE: Record<JobClass, number> = { interactive: 0, ingest: 100_000, training: 200_000 };
/** How often the place in line of this host's waiting jobs is read. */
const POSITION_POLL_MS = 1_000;

export interface RedisQueueOptions {
  /** redis://[:password@]host:port[/db], or rediss:// for TLS. */
  url: string;
  /** Key prefix shared with the workers (`serve --queue-prefix`). */
  prefix: string;
  log?: (line: string) => void;
}

export interface QueueGenerateOptions extends DispatchGenerateOptions {
  /** Who asked: users take turns. */
  user?: string;
  kind?: JobClass;
  /** The job's place in line while it waits (1 = next), then 0 once a worker has it. */
  onPosition?: (position: number) => void;
}

interface Waiter {
  options: QueueGenerateOptions;
  /** The job's result as the worker returned it; each kind of job checks its own. */
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  active: boolean;
  position?: number;
}

/** queue.redis_url with the password (AUTOLORA_REDIS_PASSWORD) put in. */
export function redisUrlWithPassword(url: string, password: string | undefined): string {
  if (!password) return url;
  const parsed = new URL(url);
  parsed.password = password;
  return parsed.toString();
}

/** The URL without its password, for messages and logs. */
export function redactRedisUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "***";
    return parsed.toString();
  } catch {
    return "(an unparsable Redis URL)";
  }
}

export class RedisQueue {
  private readonly waiters = new Map<string, Waiter>();
  private timer: NodeJS.Timeout | undefined;
  private adding: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly options: RedisQueueOptions,
    private readonly queue: Queue,
    private readonly events: QueueEvents,
    private readonly client: Redis,
    private readonly connections: Redis[],
  ) {
    events.on("active", ({ jobId }) => this.started(jobId));
    events.on("progress", ({ jobId, data }) => {
      const progress = jobProgressEventSchema.safeParse(data);
      if (progress.success) this.waiters.get(jobId)?.options.onEvent?.(progress.data);
    });
    events.on("stalled", ({ jobId }) => {
      const waiter = this.waiters.get(jobId);
      if (!waiter) return;
      waiter.active = false;
      const error = new WorkerUnavailableError("its queue worker stopped renewing the job (it died or lost Redis)");
      waiter.options.onRetry?.("a queue worker", error);
    });
    events.on("completed", ({ jobId, returnvalue }) => this.completed(jobId, returnvalue));
    events.on("failed", ({ jobId, failedReason }) => this.failed(jobId, failedReason));
    this.timer = setInterval(() => void this.announcePositions().catch(() => undefined), POSITION_POLL_MS);
    this.timer.unref();
  }

  /** Connect (a wrong password or an unreachable Redis fails here, with the reason), and listen for job events. */
  static async open(options: RedisQueueOptions): Promise<RedisQueue> {
    const probe = new Redis(options.url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    probe.on("error", () => undefined);
    try {
      await probe.connect();
      await probe.ping();
    } catch (error) {
      throw new Error(`Redis at ${redactRedisUrl(options.url)} refused or cannot be reached: ${(error as Error).message}; ` +
        "check queue.redis_url's host and AUTOLORA_REDIS_PASSWORD");
    } finally {
      probe.disconnect();
    }
    // BullMQ leaves connections it was given open when it closes: ours are closed by `close`, or the process stays.
    const clients: Redis[] = [];
    const connection = () => {
      const client = new Redis(options.url, { maxRetriesPerRequest: null });
      client.on("error", (error) => options.log?.(`[queue] Redis: ${error.message}`));
      clients.push(client);
      return client;
    };
    const queue = new Queue(GENERATE_QUEUE, { connection: connection(), prefix: options.prefix });
    const events = new QueueEvents(GENERATE_QUEUE, { connection: connection(), prefix: options.prefix });
    await Promise.all([queue.waitUntilReady(), events.waitUntilReady()]);
    return new RedisQueue(options, queue, events, connection(), clients);
  }

  /** Queue one job and wait for its end; aborting `signal` removes it from line or stops it on its worker. */
  async generate(request: GenerateRequest, options: QueueGenerateOptions = {}): Promise<JobEndEvent> {
    const value = await this.submit("generate", request.job_id, { request, user: options.user ?? "", kind: options.kind ?? "interactive" }, options);
    const end = jobEndEventSchema.safeParse(value);
    if (!end.success) throw new WorkerJobError("worker-protocol", `job ${request.job_id} ended with a result that is not a job-end event`);
    return end.data;
  }

  /**
   * An ingest's LoRA files embedded by the queue workers, in jobs of MAX_EMBED_PATHS at the ingest priority: each
   * file named by its hash (its name in the pool's store: workers with --pool-url fetch it from the host) and by
   * its path (for a worker on the host's disk). Each file's answer or its own error, in order.
   */
  async embedMany(paths: string[], signal?: AbortSignal): Promise<Array<EmbedResult | Error>> {
    const results: Array<EmbedResult | Error> = [];
    for (let start = 0; start < paths.length; start += MAX_EMBED_PATHS) {
      const chunk = paths.slice(start, start + MAX_EMBED_PATHS);
      const loras = chunk.map((path) => {
        const sha256 = /^([0-9a-f]{64})\.safetensors$/.exec(basename(path))?.[1];
        return { path, ...(sha256 ? { sha256 } : {}) };
      });
      const jobId = randomUUID();
      const value = await this.submit("embed", jobId, { request: { loras }, user: "", kind: "ingest" }, { signal, kind: "ingest" });
      const parsed = embedManyResultSchema.safeParse(value);
      if (!parsed.success || parsed.data.results.length !== chunk.length) {
        throw new WorkerJobError("worker-protocol", `embedding job ${jobId} ended with a result that is not one answer per file`);
      }
      parsed.data.results.forEach((result, n) => results.push("error" in result
        ? new WorkerRequestError(result.error.code, `a queue worker refused ${chunk[n]}: ${result.error.message}`, 422) : result));
    }
    return results;
  }

  async embed(path: string, signal?: AbortSignal): Promise<EmbedResult> {
    const [result] = await this.embedMany([path], signal);
    if (result instanceof Error) throw result;
    return result!;
  }

  private async submit(name: "generate" | "embed", jobId: string, data: { request: unknown; user: string; kind: JobClass },
    options: QueueGenerateOptions): Promise<unknown> {
    if (options.signal?.aborted) throw new JobCancelledError(`job ${jobId} was cancelled before it was queued`);
    const result = new Promise<unknown>((resolve, reject) => {
      this.waiters.set(jobId, { options, resolve, reject, active: false });
    });
    const onAbort = () => void this.cancel(jobId);
    options.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      // One add at a time, so a user's jobs queued together count each other. (Another host never adds for the
      // same user: user ids are the adapter's.)
      const added = this.adding.then(async () => {
        // A job taken up again after this host restarted may still be in Redis: wait for it (or take its end)
        // rather than draw it twice.
        if (await this.adopt(jobId)) return;
        const ahead = await this.waitingOf(data.user);
        await this.queue.add(name, data, {
          jobId, priority: CLASS_BASE[data.kind] + ahead + 1,
          removeOnComplete: { age: 24 * 3600 }, removeOnFail: { age: 7 * 24 * 3600 },
        });
      });
      this.adding = added.catch(() => undefined);
      await added;
      // Cancelled while its add waited its turn: the cancel found nothing in Redis then.
      if (options.signal?.aborted) void this.cancel(jobId);
      void this.announcePositions().catch(() => undefined);
      return await result;
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
      this.waiters.delete(jobId);
    }
  }

  /** Stop a job: out of line if it waits, or its worker is told to stop it. False if it is not this host's. */
  async cancel(jobId: string): Promise<boolean> {
    const waiter = this.waiters.get(jobId);
    if (!waiter) return false;
    const job = await this.queue.getJob(jobId);
    const state = await job?.getState();
    if (job && (state === "prioritized" || state === "waiting" || state === "delayed")) {
      await job.remove().catch(() => undefined);
      // Removed before a worker took it: nothing else will say so.
      if (!(await this.queue.getJob(jobId))) waiter.reject(new JobCancelledError(`job ${jobId} was cancelled while it waited`));
      else await this.client.publish(`${this.options.prefix}:autolora:cancel`, jobId);
    } else {
      await this.client.publish(`${this.options.prefix}:autolora:cancel`, jobId);
    }
    return true;
  }

  /** The queue workers that reported in the last few seconds (each keeps a short-lived health key). */
  async workers(): Promise<Array<WorkerHealth & { name: string }>> {
    const keys: string[] = [];
    let cursor = "0";
    do {
      const [next, found] = await this.client.scan(cursor, "MATCH", `${this.options.prefix}:autolora:workers:*`, "COUNT", 100);
      cursor = next;
      keys.push(...found);
    } while (cursor !== "0");
    const values = keys.length > 0 ? await this.client.mget(keys) : [];
    return values.flatMap((value) => {
      const parsed = value ? workerHealthSchema.passthrough().safeParse(JSON.parse(value)) : undefined;
      return parsed?.success ? [parsed.data as WorkerHealth & { name: string }] : [];
    });
  }

  /** Jobs waiting and running in Redis, from every host. */
  async counts(): Promise<{ waiting: number; running: number }> {
    const counts = await this.queue.getJobCounts("prioritized", "waiting", "active");
    return { waiting: (counts.prioritized ?? 0) + (counts.waiting ?? 0), running: counts.active ?? 0 };
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    for (const [jobId, waiter] of this.waiters) {
      waiter.reject(new WorkerUnavailableError(`the host stopped while job ${jobId} was queued; it stays in the queue`));
    }
    await Promise.allSettled([this.events.close(), this.queue.close()]);
    for (const connection of this.connections) connection.disconnect();
  }

  /** Follow a job already in Redis under this id; false if there is none. */
  private async adopt(jobId: string): Promise<boolean> {
    const job = await this.queue.getJob(jobId);
    if (!job) return false;
    const state = await job.getState();
    if (state === "completed") this.completed(jobId, job.returnvalue);
    else if (state === "failed") this.failed(jobId, job.failedReason);
    else if (state === "active") this.started(jobId);
    return true;
  }

  /** This user's jobs waiting in line, on every host. */
  private async waitingOf(user: string): Promise<number> {
    const waiting = await this.queue.getJobs(["prioritized", "waiting"]);
    return waiting.filter((job) => job?.data?.user === user).length;
  }

  private started(jobId: string): void {
    const waiter = this.waiters.get(jobId);
    if (!waiter || waiter.active) return;
    waiter.active = true;
    waiter.position = 0;
    waiter.options.onPosition?.(0);
  }

  private completed(jobId: string, returnvalue: unknown): void {
    const waiter = this.waiters.get(jobId);
    if (!waiter) return;
    waiter.resolve(typeof returnvalue === "string" ? safeJson(returnvalue) : returnvalue);
  }

  private failed(jobId: string, reason: string): void {
    const waiter = this.waiters.get(jobId);
    if (!waiter) return;
    const [, code = "internal-error", message = reason] = /^([a-z][a-z-]*): ([\s\S]*)$/.exec(reason) ?? [];
    if (code === "job-cancelled") return waiter.reject(new JobCancelledError(`job ${jobId} was cancelled`));
    // BullMQ's own words for a job that stalled twice: its workers kept dying.
    if (/stalled/i.test(reason)) {
      return waiter.reject(new WorkerUnavailableError(`job ${jobId} failed twice because its queue worker went away: ${reason}`));
    }
    waiter.reject(new WorkerJobError(code, message));
  }

  /** Tell each of this host's waiting jobs its place in line when it changes: the jobs before it in priority order. */
  private async announcePositions(): Promise<void> {
    const waiting = [...this.waiters.entries()].filter(([, waiter]) => !waiter.active);
    if (waiting.length === 0) return;
    const key = `${this.options.prefix}:${GENERATE_QUEUE}:prioritized`;
    const scores = await this.client.pipeline(waiting.map(([jobId]) => ["zscore", key, jobId])).exec();
    const counts = await this.client.pipeline(scores!.map(([, score]) =>
      ["zcount", key, "-inf", score === null ? "-inf" : `(${String(score)}`])).exec();
    waiting.forEach(([, waiter], index) => {
      if (scores![index]![1] === null || waiter.active) return; // taken by a worker meanwhile, or not queued yet
      const position = Number(counts![index]![1]) + 1;
      if (position !== waiter.position) {
        waiter.position = position;
        waiter.options.onPosition?.(position);
      }
    });
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
