// The life of the served models, as scheduler jobs: retraining the gates (on schedule, after enough crawled LoRAs
// or new ratings, or by /retrain now) and the LoRA encoder, following promotions another process made (reloading
// this process's workers), and re-embedding the pool when the encoder changed.
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Config } from "../config/schema.js";
import type { WorkerSource } from "../gpu/dispatch.js";
import type { Workers } from "../gpu/workers.js";
import { workerPython } from "../gpu/workers.js";
import type { GenerationStore } from "../pipeline/generations.js";
import type { Pool } from "../pool/open.js";
import { reembedPool } from "../pool/reembed.js";
import type { Job, Scheduler } from "../scheduler/scheduler.js";
import type { StateFile } from "../scheduler/state.js";
import { ENCODER, FLUX_ENCODER, GATES, ModelRegistry } from "./registry.js";
import {
  bootstrapFluxEncoder, reloadWorkers, retrainModel, writeBootstrapExamples, writeCaptionedLoras, writeRatedExamples,
  type RetrainOutcome,
} from "./retrain.js";

export interface Models {
  gates?: ModelRegistry;
  encoder?: ModelRegistry;
  /** The `flux` family's LoRA encoder, when a FLUX worker is configured: empty until one is bootstrapped. */
  fluxEncoder?: ModelRegistry;
}

/** Whether a local worker runs the `flux` family (its model is a FLUX folder, not a family name). */
export function servesFlux(config: Config): boolean {
  return config.workers.local.some((worker) => worker.model !== "proving-ground");
}

/** The versions of the gates and the LoRA encoder (data/models), each started from the bundle's; a kind the
 *  bundle does not have is absent. A FLUX host also gets the flux encoder's registry (none ships). */
export async function openModels(config: Config): Promise<Models> {
  const bundle = resolve(config.bundle_dir);
  const root = join(resolve(config.data_dir), "models");
  const gates = join(bundle, "gates", "gates.safetensors");
  const encoder = join(bundle, "encoder", "encoder.json");
  return {
    gates: existsSync(gates) ? await ModelRegistry.open(root, gates, GATES) : undefined,
    encoder: existsSync(encoder) ? await ModelRegistry.open(root, join(bundle, "encoder"), ENCODER) : undefined,
    fluxEncoder: servesFlux(config) ? await ModelRegistry.open(root, undefined, FLUX_ENCODER) : undefined,
  };
}

/** How often each process checks data/models for promotions made elsewhere (`autolora models promote`). */
const FOLLOW_SCHEDULE = "*/5 * * * * *";
/** How often enough new ratings are looked for (they are a reason to retrain the gates). */
const RATINGS_SCHEDULE = "0 */10 * * * *";

export interface LifecycleDependencies {
  config: Config;
  models: Models;
  workers: Pick<Workers, "source" | "dispatcher">;
  pool: Pool;
  generations: GenerationStore;
  state: StateFile;
  log: (line: string) => void;
  /** The scheduler the jobs run in (they start one another); read when a job runs, after it exists. */
  scheduler: () => Pick<Scheduler, "trigger" | "isRunning">;
}

export interface ModelLifecycle {
  jobs: Job[];
  /** /retrain now: start retraining the gates in the background. Absent where there are no gates to retrain. */
  retrainNow?: () => Promise<string>;
}

export function modelLifecycle(deps: LifecycleDependencies): ModelLifecycle {
  const { config, models, pool, log } = deps;
  const settings = config.scheduler.retrain;
  const start = (name: string, reason: "scheduled" | "manual" = "scheduled") => void deps.scheduler().trigger(name, reason);
  const retrainOptions = (registry: ModelRegistry, steps: number, metrics: string[]) => ({
    registry, python: workerPython(config), bundleDir: resolve(config.bundle_dir), workers: () => deps.workers.source.ready(),
    steps, metrics, evalPairs: settings.eval_pairs, log,
  });
  const jobs: Job[] = [{
    name: "reembed", schedule: "",
    run: async (signal) => {
      const version = await encoderVersion(deps.workers.source);
      if (!version) return "no worker has a LoRA encoder; nothing to re-embed with";
      const report = await reembedPool({ ...pool, encoderVersion: version, embed: (file, abort) => deps.workers.dispatcher.embed(file, abort), signal, log });
      return `${report.reembedded} LoRAs re-embedded with ${version}${report.skipped.length ? `, ${report.skipped.length} skipped` : ""} in ${report.seconds} s`;
    },
  }];
  let checkedPool = false;
  jobs.push({
    name: "follow-models", schedule: FOLLOW_SCHEDULE, local: true,
    run: async () => {
      const reloaded: string[] = [];
      for (const registry of [models.gates, models.encoder, models.fluxEncoder]) {
        if (!registry || !(await registry.refresh())) continue;
        const count = await reloadWorkers(registry, deps.workers.source.ready(), log);
        reloaded.push(`${registry.kind.name} ${registry.serving().version} promoted elsewhere: ${count} worker(s) reloaded`);
      }
      if (!checkedPool || reloaded.some((line) => line.startsWith("encoder"))) {
        checkedPool = true;
        const current = await encoderVersion(deps.workers.source);
        if (current && (await pool.index.embeddedByOther(current, 1)).length > 0) {
          // The encoder changed since these LoRAs were embedded: bring them up to date, searching all the while.
          reloaded.push(`some LoRAs were embedded by another encoder than ${current}: re-embedding them in the background`);
          start("reembed");
        }
      }
      return reloaded.join("; ");
    },
  });
  // An encoder job: a promoted encoder's embeddings replace the pool's in the background.
  const encoderJob = (name: string, train: (signal: AbortSignal) => Promise<RetrainOutcome>): Job => ({
    name, schedule: settings.encoder_schedule,
    run: async (signal) => {
      const outcome = await train(signal);
      if (outcome.promoted) start("reembed");
      return outcome.summary;
    },
  });
  const encoder = models.encoder;
  if (encoder) {
    jobs.push(encoderJob("retrain-encoder", (signal) => retrainModel({
      ...retrainOptions(encoder, settings.encoder_steps, settings.encoder_metrics),
      extras: (folder) => writeCaptionedLoras(pool.index, pool.store, folder),
    }, signal)));
  }
  const fluxEncoder = models.fluxEncoder;
  if (fluxEncoder) {
    // LoRAs found by their text until now get weight embeddings once an encoder is promoted.
    jobs.push(encoderJob("retrain-encoder-flux", (signal) => bootstrapFluxEncoder({
      ...retrainOptions(fluxEncoder, settings.encoder_steps, []),
      examples: (folder) => writeBootstrapExamples(pool.index, pool.store, folder, "flux"),
    }, signal)));
  }
  const gates = models.gates;
  if (!gates) return { jobs };
  jobs.push({
    name: "retrain", schedule: settings.schedule,
    run: async (signal) => {
      await deps.state.update((saved) => { saved.jobs.retrain = { ...saved.jobs.retrain, pendingLoras: 0 }; });
      return (await retrainModel({
        ...retrainOptions(gates, settings.steps, settings.metrics),
        extras: (folder) => writeRatedExamples(deps.generations, pool.store, resolve(config.data_dir), folder, settings.rated_min_score),
      }, signal)).summary;
    },
  });
  if (settings.after_new_ratings > 0) {
    jobs.push({
      name: "ratings-watch", schedule: RATINGS_SCHEDULE, local: true,
      run: async () => {
        const since = new Date((await deps.state.read()).jobs.retrain?.lastRun ?? 0);
        if (deps.scheduler().isRunning("retrain") || (await deps.generations.ratingsSince(since)) < settings.after_new_ratings) return "";
        start("retrain");
        return `${settings.after_new_ratings}+ new ratings since the last retrain: retraining`;
      },
    });
  }
  return {
    jobs,
    retrainNow: async () => {
      if (deps.scheduler().isRunning("retrain")) return "retraining is already running; /pool status shows when it ends";
      start("retrain", "manual");
      return "retraining started: a candidate is trained, measured on held-out LoRAs and promoted only if it is not worse";
    },
  };
}

/** The LoRA encoder the workers embed with (the first ready one says). */
export async function encoderVersion(workers: WorkerSource): Promise<string | null> {
  const worker = workers.ready()[0];
  return worker ? (await worker.health()).encoder_version ?? null : null;
}
