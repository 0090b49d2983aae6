// Runs each job on a ready worker, the least busy one, and makes sure no accepted job is silently lost: a job
// whose worker goes away mid-run is retried once (elsewhere, or on the same worker after its restart), and
// otherwise fails with a message that says so.
import { oneByOne, type GenerateOptions, type WorkerBackend } from "./backend.js";
import { WorkerUnavailableError } from "./errors.js";
import type { EmbedResult, GenerateRequest, JobEndEvent, JudgeResult } from "./protocol.js";

export interface WorkerSource {
  /** Workers able to take a job now. */
  ready(): WorkerBackend[];
  /** Resolves true when one is, false after `timeoutMs`. */
  whenAnyReady(timeoutMs: number): Promise<boolean>;
}

export interface DispatchOptions {
  /** How long a job waits for some worker to become ready (e.g. during a restart). Default 120 s. */
  waitForWorkerMs?: number;
  /** Told when a job is retried after its worker went away, e.g. to tell the user. */
  onRetry?: (jobId: string, failedWorker: string, error: WorkerUnavailableError) => void;
}

export interface DispatchGenerateOptions extends GenerateOptions {
  /** Told when this job starts again after its worker went away, e.g. to tell the person waiting for it. */
  onRetry?: (failedWorker: string, error: WorkerUnavailableError) => void;
  /** Who asked (a dispatcher that queues jobs itself lets users take turns). */
  user?: string;
  /** A dispatcher that queues jobs itself (`queues`) tells the place in line here: 1 = next, 0 = running. */
  onPosition?: (position: number) => void;
}

export class WorkerDispatcher {
  private readonly busy = new Map<string, number>();
  private readonly waitForWorkerMs: number;

  constructor(private readonly source: WorkerSource, private readonly options: DispatchOptions = {}) {
    this.waitForWorkerMs = options.waitForWorkerMs ?? 120_000;
  }

  async generate(request: GenerateRequest, options: DispatchGenerateOptions = {}): Promise<JobEndEvent> {
    let failed: { worker: string; error: WorkerUnavailableError } | undefined;
    for (let attempt = 1; attempt <= 2; attempt++) {
      const worker = await this.pick(failed?.worker);
      if (!worker) {
        const why = failed ? `its worker ${failed.worker} went away (${failed.error.message}) and` : "";
        throw new WorkerUnavailableError(
          `job ${request.job_id} could not run: ${why} no GPU worker became ready within ${Math.round(this.waitForWorkerMs / 1000)} s; please try again later`,
        );
      }
      this.busy.set(worker.id, (this.busy.get(worker.id) ?? 0) + 1);
      try {
        return await worker.generate(request, options);
      } catch (error) {
        if (!(error instanceof WorkerUnavailableError)) throw error;
        if (failed) {
          throw new WorkerUnavailableError(
            `job ${request.job_id} failed twice because its worker went away (${failed.worker}, then ${worker.id}): ${error.message}`,
            { cause: error },
          );
        }
        failed = { worker: worker.id, error };
        this.options.onRetry?.(request.job_id, worker.id, error);
        options.onRetry?.(worker.id, error);
      } finally {
        this.busy.set(worker.id, (this.busy.get(worker.id) ?? 1) - 1);
      }
    }
    throw new Error("unreachable");
  }

  /** Embed a LoRA file on a ready worker, retried once on another if the first goes away. */
  async embed(path: string, signal?: AbortSignal): Promise<EmbedResult> {
    const first = await this.pick();
    if (!first) throw new WorkerUnavailableError(`no GPU worker became ready within ${Math.round(this.waitForWorkerMs / 1000)} s to embed ${path}`);
    try {
      return await first.embed(path, signal);
    } catch (error) {
      if (!(error instanceof WorkerUnavailableError)) throw error;
      const second = await this.pick(first.id);
      if (!second) throw error;
      return second.embed(path, signal);
    }
  }

  /** Embed many LoRA files on one ready worker (one call where the worker takes many), each file its result or its
   *  own error; the whole batch is retried once on another worker if the first goes away. */
  async embedMany(paths: string[], signal?: AbortSignal): Promise<Array<EmbedResult | Error>> {
    const on = async (worker: WorkerBackend) => worker.embedMany ? worker.embedMany(paths, signal) : oneByOne(worker, paths, signal);
    const first = await this.pick();
    if (!first) throw new WorkerUnavailableError(`no GPU worker became ready within ${Math.round(this.waitForWorkerMs / 1000)} s to embed ${paths.length} LoRA files`);
    try {
      return await on(first);
    } catch (error) {
      if (!(error instanceof WorkerUnavailableError)) throw error;
      const second = await this.pick(first.id);
      if (!second) throw error;
      return on(second);
    }
  }

  /** The proving ground's evaluator on PNG images, on a ready worker that has one (benchmarks only). */
  async judge(pngs: Buffer[], signal?: AbortSignal): Promise<JudgeResult> {
    const worker = await this.pick();
    if (!worker) throw new WorkerUnavailableError(`no GPU worker became ready within ${Math.round(this.waitForWorkerMs / 1000)} s to judge images`);
    if (!worker.judge) throw new WorkerUnavailableError(`worker ${worker.id} has no /judge route (an older worker)`);
    return worker.judge(pngs, signal);
  }

  /** The least busy ready worker, preferring one other than `avoid`; waits for one if none is ready. */
  private async pick(avoid?: string): Promise<WorkerBackend | undefined> {
    const deadline = Date.now() + this.waitForWorkerMs;
    for (;;) {
      const ready = this.source.ready();
      if (ready.length > 0) {
        const ranked = [...ready].sort((a, b) =>
          Number(a.id === avoid) - Number(b.id === avoid) || (this.busy.get(a.id) ?? 0) - (this.busy.get(b.id) ?? 0));
        const best = ranked[0]!;
        // The worker that just failed may still be listed before its supervisor sees it exit: use it only once it
        // answers again (after a restart, or if the failure was the network's).
        if (best.id !== avoid || (await best.health().then(() => true, () => false))) return best;
        if (Date.now() >= deadline) return undefined;
        await new Promise((resolve) => setTimeout(resolve, 100));
        continue;
      }
      const left = deadline - Date.now();
      if (left <= 0 || !(await this.source.whenAnyReady(left))) return undefined;
    }
  }
}

