// The host's parts, built from the validated configuration: the LoRA pool (store + index) and the workers
// (supervised local ones and remote ones behind one dispatcher). Commands and the server start from here.
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Config } from "./config/schema.js";
import type { Secrets } from "./config/secrets.js";
import { WorkerDispatcher, type WorkerSource } from "./gpu/dispatch.js";
import { combineWorkerSources, RemoteWorkers } from "./gpu/remote.js";
import { pythonWorkerCommand, WorkerSupervisor } from "./gpu/supervisor.js";
import type { LoraIndex } from "./pool/index.js";
import { LanceLoraIndex } from "./pool/lancedb-index.js";
import { LoraStore } from "./pool/store.js";

const REPO_ROOT = resolve(import.meta.dirname, "..");

export interface Pool {
  store: LoraStore;
  index: LoraIndex;
}

export async function openPool(config: Config): Promise<Pool> {
  const dataDir = resolve(config.data_dir);
  return {
    store: new LoraStore(join(dataDir, "pool")),
    index: await LanceLoraIndex.open({ uri: config.lancedb_uri || join(dataDir, "lancedb") }),
  };
}

export interface Workers {
  dispatcher: WorkerDispatcher;
  source: WorkerSource;
  supervisor: WorkerSupervisor;
  stop(): Promise<void>;
}

/** Start the configured workers and wait until they answer; `log` gets their stderr and supervision notes. */
export async function startWorkers(config: Config, secrets: Secrets, log: (line: string) => void): Promise<Workers> {
  const python = config.workers.python || [join(REPO_ROOT, ".venv", "bin", "python")].find(existsSync) || "python3";
  const supervisor = new WorkerSupervisor({
    workers: config.workers.local.map(({ device, model }) => ({
      ...pythonWorkerCommand(python, device, model),
      env: { AUTOLORA_BUNDLE: resolve(config.bundle_dir), PYTHONUNBUFFERED: "1" },
    })),
    startupTimeoutMs: config.workers.startup_timeout_s * 1000,
    jobTimeoutMs: config.workers.job_timeout_s * 1000,
    log,
  });
  const remote = new RemoteWorkers({
    urls: config.workers.remote,
    token: config.workers.remote.length > 0 ? secrets.require("workerToken", "remote workers (workers.remote)") : "",
    jobTimeoutMs: config.workers.job_timeout_s * 1000,
  });
  await Promise.all([supervisor.start(config.workers.startup_timeout_s * 1000), remote.start()]);
  const source = combineWorkerSources(supervisor, remote);
  if (source.ready().length === 0) {
    await supervisor.stop();
    remote.stop();
    throw new Error("no GPU worker is configured or reachable (workers.local and workers.remote)");
  }
  return {
    dispatcher: new WorkerDispatcher(source, { waitForWorkerMs: config.workers.startup_timeout_s * 1000 }),
    source,
    supervisor,
    stop: async () => {
      remote.stop();
      await supervisor.stop();
    },
  };
}
