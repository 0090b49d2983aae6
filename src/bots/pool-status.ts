// What `/pool status` shows: the pool's size, the last crawl, the queue, and each worker with the versions it
// serves (a worker that does not answer within 3 s is listed as such rather than holding up the answer).
import type { Workers } from "../gpu/workers.js";
import type { FairQueue } from "../pipeline/queue.js";
import type { LoraIndex } from "../pool/index.js";
import type { JobState, StateFile } from "../scheduler/state.js";
import type { PoolStatus } from "./commands.js";

const HEALTH_TIMEOUT_MS = 3000;

export async function poolStatus(index: LoraIndex, queue: FairQueue, workers: Pick<Workers, "source" | "supervisor">,
  state: StateFile): Promise<PoolStatus> {
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
  return {
    loras: await index.count({}), blocked: await index.count({ state: "blocked" }),
    searchable: {
      weights: await index.count({ embedding: "weights" }), textOnly: await index.count({ embedding: "text" }),
      none: await index.count({ embedding: "none" }),
    },
    lastCrawl: lastCrawl((await state.read()).jobs.crawl),
    queue: { waiting: stats.waiting, running: stats.running }, workers: [...answering, ...others],
  };
}

function lastCrawl(job: JobState | undefined): string | null {
  if (!job?.lastFinished) return null;
  const outcome = job.lastOutcome === "ok" ? job.lastSummary : `${job.lastOutcome}: ${job.lastError}`;
  return `${job.lastFinished} (${outcome})`;
}
