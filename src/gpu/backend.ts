// What the host needs of a GPU worker, apart from how it is reached: a local process the supervisor spawned, a
// remote URL, or a test's fake all look like this.
import { WorkerUnavailableError } from "./errors.js";
import type { EmbedResult, GenerateRequest, JobEndEvent, JudgeResult, WorkerEvent, WorkerHealth } from "./protocol.js";

export interface GenerateOptions {
  /** Aborting asks the worker to stop at its next step and rejects with JobCancelledError. */
  signal?: AbortSignal;
  /** Every event as it arrives (job-start, job-progress…), the final one included. */
  onEvent?: (event: WorkerEvent) => void;
}

export interface WorkerBackend {
  /** A stable name for logs and errors (never the token). */
  readonly id: string;
  health(signal?: AbortSignal): Promise<WorkerHealth>;
  /** Run one job to its end; rejects with a WorkerError subclass saying why it did not finish. */
  generate(request: GenerateRequest, options?: GenerateOptions): Promise<JobEndEvent>;
  /** Read a LoRA file at a path the worker can see and embed it with the LoRA encoder. */
  embed(path: string, signal?: AbortSignal): Promise<EmbedResult>;
  /** Many files in one call, in order: each its result or the error of that file alone. Absent on backends that
   *  embed one file at a time. */
  embedMany?(paths: string[], signal?: AbortSignal): Promise<Array<EmbedResult | Error>>;
  /** The proving ground's evaluator on PNG images (benchmarks). Absent on backends that cannot reach one. */
  judge?(pngs: Buffer[], signal?: AbortSignal): Promise<JudgeResult>;
  /** Ask the worker to stop a job; false if it has no such job (already over). */
  cancel(jobId: string): Promise<boolean>;
  /** Serve the gate file at `path` (one the worker can read) from its next job on; resolves to the new version. */
  reloadGates(path: string): Promise<string>;
  /** Embed with the LoRA encoder in folder `path` from now on; resolves to its version. */
  reloadEncoder(path: string): Promise<string>;
}

/** embedMany on a backend that embeds one file a call: a file's refusal is its own; a worker gone is the batch's. */
export async function oneByOne(worker: Pick<WorkerBackend, "embed">, paths: string[], signal?: AbortSignal): Promise<Array<EmbedResult | Error>> {
  const results: Array<EmbedResult | Error> = [];
  for (const path of paths) {
    results.push(await worker.embed(path, signal).catch((error: Error) => {
      if (error instanceof WorkerUnavailableError) throw error;
      return error;
    }));
  }
  return results;
}
