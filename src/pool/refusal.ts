// Which failures of adding a LoRA are refusals of what was given (a private address, a FIFO, a pickle, a corrupt
// header, a file the worker cannot use) rather than failures of ours: expected, so a log line carries their code
// and message and never a stack trace.
import { WorkerJobError } from "../gpu/errors.js";
import { DownloadError } from "./download.js";
import { InvalidLoraFileError } from "./safetensors.js";
import { StoreBusyError } from "./store.js";

// The worker's codes for a file it refused (autolora_worker/errors.py).
const WORKER_REFUSALS = new Set(["invalid-lora-file", "incompatible-lora"]);

export function isRefusal(error: unknown): error is Error & { code: string } {
  return error instanceof DownloadError || error instanceof InvalidLoraFileError || error instanceof StoreBusyError
    || (error instanceof WorkerJobError && WORKER_REFUSALS.has(error.code));
}
