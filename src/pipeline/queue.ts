// The job queue: interactive jobs before ingest before training; within a class, users take turns (round robin),
// so one user flooding the queue cannot starve another; a per-user and a global cap answer "full" with an
// estimate of when to try again. p-queue runs the dispatched jobs; which job goes next is decided here.
import { randomUUID } from "node:crypto";
import PQueue from "p-queue";
import { JobCancelledError } from "../gpu/errors.js";

export const JOB_CLASSES = ["interactive", "ingest", "training"] as const; // highest priority first
export type JobClass = (typeof JOB_CLASSES)[number];

export interface QueueOptions {
  /** Jobs running at once (one per worker is typical). */
  concurrency: number;
  /** Jobs one user may have waiting or running. */
  perUser: number;
  /** Jobs waiting or running in all. */
  global: number;
  /** Assumed duration of a job before any has finished, for "try again in …". Default 30 s. */
  initialJobMs?: number;
  /** Injectable clock, for tests. */
  now?: () => number;
}

export interface EnqueueOptions<T> {
  user: string;
  kind?: JobClass;
  /** Aborting cancels the job: removed if waiting, its run's signal aborted if running. */
  signal?: AbortSignal;
  /** Told the job's place in line (1 = next) whenever it changes, and 0 when it starts. */
  onPosition?: (position: number) => void;
  run: (signal: AbortSignal) => Promise<T>;
}

export interface QueuedJob<T> {
  id: string;
  result: Promise<T>;
  /** Cancel it; false if it had already finished. */
  cancel(): boolean;
}

/** The queue, or this user's share of it, is full. `retryAfterMs` estimates when a place frees up. */
export class QueueFullError extends Error {
  override readonly name = "QueueFullError";
  readonly code = "queue-full";
  constructor(message: string, readonly retryAfterMs: number) {
    super(message);
  }
}

interface Entry {
  id: string;
  user: string;
  kind: JobClass;
  run: (signal: AbortSignal) => Promise<unknown>;
  controller: AbortController;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
  onPosition?: (position: number) => void;
  lastPosition?: number;
  state: "waiting" | "running" | "done";
}

export class FairQueue {
  private readonly executor: PQueue;
  /** Per class: users in turn order, each with their waiting jobs in arrival order. */
  private readonly waiting = new Map<JobClass, Map<string, Entry[]>>(JOB_CLASSES.map((kind) => [kind, new Map()]));
  private readonly entries = new Map<string, Entry>();
  private readonly durations: number[] = [];
  private readonly now: () => number;
  private running = 0;
  private served = 0;
  private readonly lastServed = new Map<string, number>();

  constructor(private options: QueueOptions) {
    if (options.concurrency < 1 || options.perUser < 1 || options.global < options.perUser) {
      throw new Error(`queue limits must satisfy concurrency ≥ 1 and 1 ≤ perUser ≤ global, got ${JSON.stringify(options)}`);
    }
    this.executor = new PQueue({ concurrency: options.concurrency });
    this.now = options.now ?? Date.now;
  }

  enqueue<T>(options: EnqueueOptions<T>): QueuedJob<T> {
    const kind = options.kind ?? "interactive";
    const mine = [...this.entries.values()].filter((entry) => entry.user === options.user).length;
    if (mine >= this.options.perUser) {
      const wait = this.averageJobMs();
      throw new QueueFullError(`you already have ${mine} job${mine === 1 ? "" : "s"} queued or running (the limit is ` +
        `${this.options.perUser}); try again in ${describeWait(wait)}, or cancel one`, wait);
    }
    if (this.entries.size >= this.options.global) {
      const wait = this.averageJobMs() * Math.ceil((this.waitingCount() + 1) / this.options.concurrency);
      throw new QueueFullError(`the queue is full (${this.entries.size} jobs); try again in ${describeWait(wait)}`, wait);
    }
    if (options.signal?.aborted) throw new JobCancelledError("the job was cancelled before it was queued");
    const id = randomUUID();
    let resolve!: (value: unknown) => void;
    let reject!: (error: unknown) => void;
    const result = new Promise<T>((ok, fail) => { resolve = ok as (value: unknown) => void; reject = fail; });
    const entry: Entry = {
      id, user: options.user, kind, run: options.run, controller: new AbortController(), resolve, reject,
      onPosition: options.onPosition, state: "waiting",
    };
    this.entries.set(id, entry);
    const lines = this.waiting.get(kind)!;
    lines.set(options.user, [...(lines.get(options.user) ?? []), entry]);
    options.signal?.addEventListener("abort", () => this.cancel(id), { once: true });
    this.pump();
    return { id, result, cancel: () => this.cancel(id) };
  }

  /** 1-based place in line of a waiting job, 0 for a running one, undefined for one that is over. */
  positionOf(id: string): number | undefined {
    const entry = this.entries.get(id);
    if (!entry) return undefined;
    return entry.state === "running" ? 0 : this.order().indexOf(entry) + 1;
  }

  cancel(id: string): boolean {
    const entry = this.entries.get(id);
    if (!entry || entry.state === "done") return false;
    if (entry.state === "waiting") {
      this.removeWaiting(entry);
      this.finish(entry);
      entry.reject(new JobCancelledError("the job was cancelled while it waited"));
      this.announcePositions();
    } else {
      entry.controller.abort(new JobCancelledError("the job was cancelled while it ran"));
    }
    return true;
  }

  /** Run up to `concurrency` jobs at once from now on (e.g. as workers come and go); at least 1. */
  setConcurrency(concurrency: number): void {
    const next = Math.max(1, Math.floor(concurrency));
    if (next === this.options.concurrency) return;
    this.options = { ...this.options, concurrency: next };
    this.executor.concurrency = next;
    this.pump();
  }

  stats(): { waiting: number; running: number; averageJobMs: number } {
    return { waiting: this.waitingCount(), running: this.entries.size - this.waitingCount(), averageJobMs: this.averageJobMs() };
  }

  /** Resolves when nothing is waiting or running. */
  async idle(): Promise<void> {
    await this.executor.onIdle();
  }

  /** Start waiting jobs while there is capacity, in fair order. */
  private pump(): void {
    // Our own count, not p-queue's: a finishing job calls pump() while p-queue still counts it as pending.
    while (this.running < this.options.concurrency) {
      const next = this.order()[0];
      if (!next) break;
      this.removeWaiting(next);
      this.rotate(next);
      next.state = "running";
      this.running += 1;
      next.onPosition?.(0);
      const started = this.now();
      void this.executor.add(async () => {
        try {
          next.resolve(await next.run(next.controller.signal));
        } catch (error) {
          next.reject(next.controller.signal.aborted && !(error instanceof JobCancelledError) ? next.controller.signal.reason : error);
        } finally {
          this.durations.push(this.now() - started);
          if (this.durations.length > 20) this.durations.shift();
          this.running -= 1;
          this.finish(next);
          this.pump();
        }
      });
    }
    this.announcePositions();
  }

  /** The waiting jobs in the order they would start: class by class, users taking turns, each user's FIFO. */
  private order(): Entry[] {
    const order: Entry[] = [];
    for (const kind of JOB_CLASSES) {
      // Users who were served longest ago (or never) go first; Map order (arrival) breaks ties.
      const users = [...this.waiting.get(kind)!.entries()]
        .sort(([a], [b]) => (this.lastServed.get(a) ?? -1) - (this.lastServed.get(b) ?? -1));
      const queues = users.map(([, jobs]) => [...jobs]);
      while (queues.some((jobs) => jobs.length > 0)) {
        for (const jobs of queues) {
          const job = jobs.shift();
          if (job) order.push(job);
        }
      }
    }
    return order;
  }

  /** After a user's job starts, that user goes to the back of the turn order. */
  private rotate(entry: Entry): void {
    this.lastServed.set(entry.user, this.served++);
  }

  private removeWaiting(entry: Entry): void {
    const lines = this.waiting.get(entry.kind)!;
    const jobs = (lines.get(entry.user) ?? []).filter((job) => job !== entry);
    if (jobs.length > 0) lines.set(entry.user, jobs);
    else lines.delete(entry.user);
  }

  private finish(entry: Entry): void {
    entry.state = "done";
    this.entries.delete(entry.id);
  }

  private announcePositions(): void {
    this.order().forEach((entry, index) => {
      if (entry.lastPosition !== index + 1) {
        entry.lastPosition = index + 1;
        entry.onPosition?.(index + 1);
      }
    });
  }

  private waitingCount(): number {
    return [...this.entries.values()].filter((entry) => entry.state === "waiting").length;
  }

  private averageJobMs(): number {
    if (this.durations.length === 0) return this.options.initialJobMs ?? 30_000;
    return this.durations.reduce((sum, value) => sum + value, 0) / this.durations.length;
  }
}

function describeWait(ms: number): string {
  const seconds = Math.max(1, Math.round(ms / 1000));
  if (seconds < 90) return `about ${seconds} s`;
  return `about ${Math.round(seconds / 60)} minutes`;
}
