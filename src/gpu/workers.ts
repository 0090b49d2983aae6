// The configured workers as one source for the dispatcher: the local ones the supervisor spawns (serving the
// versions of gates and encoder that data/models promotes) and the remote ones reached by URL.
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Config } from "../config/schema.js";
import type { Secrets } from "../config/secrets.js";
import type { Models } from "../models/lifecycle.js";
import { WorkerDispatcher, type WorkerSource } from "./dispatch.js";
import { combineWorkerSources, RemoteWorkers } from "./remote.js";
import { pythonWorkerCommand, WorkerSupervisor } from "./supervisor.js";

const REPO_ROOT = resolve(import.meta.dirname, "..", "..");

export interface Workers {
  dispatcher: WorkerDispatcher;
  source: WorkerSource;
  /** The local workers; `status()` lists those not ready too. */
  supervisor: Pick<WorkerSupervisor, "status">;
  stop(): Promise<void>;
}

/** The Python that runs local workers and the trainers. */
export function workerPython(config: Config): string {
  return config.workers.python || [join(REPO_ROOT, ".venv", "bin", "python")].find(existsSync) || "python3";
}

/** Start the configured workers and wait until they answer; `log` gets their stderr and supervision notes. */
export async function startWorkers(config: Config, secrets: Secrets, log: (line: string) => void, models: Models): Promise<Workers> {
  const python = workerPython(config);
  const supervisor = new WorkerSupervisor({
    workers: config.workers.local.map(({ device, model, gates }) => {
      // Proving-ground workers serve the promoted gates and encoder (the served paths never change); FLUX workers
      // their configured gate file (`gates import`) and the flux encoder once one is bootstrapped.
      const proving = model === "proving-ground";
      const served = proving ? models : models.fluxEncoder?.hasServing() ? { encoder: models.fluxEncoder } : {};
      const gateFile = proving ? served.gates?.servingPath : gates && resolve(gates);
      return {
        ...pythonWorkerCommand(python, device, model, gateFile, served.encoder?.servingPath),
        env: { AUTOLORA_BUNDLE: resolve(config.bundle_dir), PYTHONUNBUFFERED: "1" },
      };
    }),
    startupTimeoutMs: config.workers.startup_timeout_s * 1000,
    jobTimeoutMs: config.workers.job_timeout_s * 1000,
    log,
  });
  const remote = new RemoteWorkers({
    urls: config.workers.remote,
    token: config.workers.remote.length > 0 ? secrets.require("workerToken", "remote workers (workers.remote)") : "",
    jobTimeoutMs: config.workers.job_timeout_s * 1000,
  });
  const stop = async () => {
    remote.stop();
    await supervisor.stop();
  };
  try {
    await Promise.all([supervisor.start(config.workers.startup_timeout_s * 1000), remote.start()]);
  } catch (error) {
    await stop();
    throw error;
  }
  const source = combineWorkerSources(supervisor, remote);
  // A Redis host may have none of its own: the queue workers draw and embed for it.
  const own = config.workers.local.length + config.workers.remote.length;
  if (source.ready().length === 0 && (own > 0 || config.queue.backend !== "redis")) {
    await stop();
    throw new Error("no GPU worker is configured or reachable (workers.local and workers.remote)");
  }
  return { dispatcher: new WorkerDispatcher(source, { waitForWorkerMs: config.workers.startup_timeout_s * 1000 }), source, supervisor, stop };
}

/** Workers from an already started supervisor (tests and benchmarks give it their own worker commands). */
export function supervisedWorkers(supervisor: WorkerSupervisor, waitForWorkerMs?: number): Workers {
  return { dispatcher: new WorkerDispatcher(supervisor, { waitForWorkerMs }), source: supervisor, supervisor, stop: () => supervisor.stop() };
}
