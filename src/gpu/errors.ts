// Why a job on a worker did not finish, as typed errors with stable codes; messages are fit to show a user.

export abstract class WorkerError extends Error {
  abstract readonly code: string;
}

/** The worker could not be reached, or went away mid-job (crash, restart, network). Safe to retry elsewhere. */
export class WorkerUnavailableError extends WorkerError {
  override readonly name = "WorkerUnavailableError";
  readonly code = "worker-unavailable";
}

/** The job took longer than the configured limit; the worker was asked to stop it. */
export class WorkerTimeoutError extends WorkerError {
  override readonly name = "WorkerTimeoutError";
  readonly code = "worker-timeout";
}

/** The requester cancelled the job. */
export class JobCancelledError extends WorkerError {
  override readonly name = "JobCancelledError";
  readonly code = "job-cancelled";
}

/** The worker ran the job and reported an error (a bad LoRA file, an invalid request, a model failure). */
export class WorkerJobError extends WorkerError {
  override readonly name = "WorkerJobError";
  /** The worker's own code, e.g. invalid-lora-file, incompatible-lora, invalid-request, internal-error. */
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

/** The worker refused the request itself (HTTP 4xx): retrying it anywhere gives the same answer. */
export class WorkerRequestError extends WorkerError {
  override readonly name = "WorkerRequestError";
  constructor(readonly code: string, message: string, readonly status: number) {
    super(message);
  }
}
