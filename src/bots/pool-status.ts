// What `/pool status` shows: the pool's size, the last crawl, the queue, and each worker with the versions it
// serves (a worker that does not answer within 3 s is listed as such rather than holding up the answer), with
// the Redis queue's workers and counts over every host where jobs go through Redis.
import type { WorkerHealth } from "../gpu/protocol.js";
import type { Workers } from "../gpu/workers.js";
import type { FairQueue } from "../pipeline/queue.js";
import type { LoraIndex } from "../pool/index.js";
import type { JobState, StateFile } from "../scheduler/state.js";
import type { PoolStatus } from "./commands.js";

const HEALTH_TIMEOUT_MS = 3000;

/** queue.backend redis: the workers that pull from it and its counts over every host. */
export interface SharedQueueStatus {
  workers(): Promise<Array<WorkerHealth & { name: string }>>;
  counts(): Promise<{ waiting: number; running: number }>;
}

export async function poolStatus(index: LoraIndex, queue: FairQueue, workers: Pick<Workers, "source" | "supervisor">,
  state: StateFile, shared?: SharedQueueStatus): Promise<PoolStatus> {
  const ready = workers.source.ready();
  const answering = await Promise.all(ready.map(async (worker) => {
    const timeout = new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error(`no answer in ${HEALTH_TIMEOUT_MS / 1000} s`)), HEALTH_TIMEOUT_MS).unref());
    try {
      const health = await Promise.race([worker.health(), timeout]);
      return {
        id: worker.id, state: "ready", model: health.family, modelVersion: health.model_version, gateVersion: health.gate_version,
        encoderVersion: health.encoder_version ?? null,
      };
    } catch (error) {
      return { id: worker.id, state: `not answering (${error instanceof Error ? error.message : String(error)})` };
    }
  }));
  const others = workers.supervisor.status().filter((status) => !ready.some((worker) => worker.id === status.id))
    .map((status) => ({ id: status.id, state: status.state }));
  const stats = queue.stats();
  // Redis unreachable for a moment: the rest of the status still answers, and says so.
  const [pulling, counts] = shared ? await Promise.all([
    shared.workers().catch(() => undefined), shared.counts().catch(() => undefined),
  ]) : [[], undefined];
  const queueWorkers: PoolStatus["workers"] = (pulling ?? []).map((worker) => ({
    id: `queue:${worker.name}`, state: "pulling from Redis", model: worker.family, modelVersion: worker.model_version,
    gateVersion: worker.gate_version, encoderVersion: worker.encoder_version ?? null,
  }));
  if (shared && !pulling) queueWorkers.push({ id: "queue", state: "Redis did not answer" });
  return {
    loras: await index.count({}), blocked: await index.count({ state: "blocked" }),
    searchable: {
      weights: await index.count({ embedding: "weights" }), textOnly: await index.count({ embedding: "text" }),
      none: await index.count({ embedding: "none" }),
    },
    lastCrawl: lastCrawl((await state.read()).jobs.crawl),
    queue: { waiting: stats.waiting, running: stats.running, ...(counts ? { shared: counts } : {}) },
    workers: [...answering, ...others, ...queueWorkers],
  };
}

function lastCrawl(job: JobState | undefined): string | null {
  if (!job?.lastFinished) return null;
  const outcome = job.lastOutcome === "ok" ? job.lastSummary : `${job.lastOutcome}: ${job.lastError}`;
  return `${job.lastFinished} (${outcome})`;
}
