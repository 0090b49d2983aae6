// The host's parts, built from the validated configuration: the LoRA pool (store + index) and the workers
// (supervised local ones and remote ones behind one dispatcher). Commands and the server start from here.
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Config } from "./config/schema.js";
import type { Secrets } from "./config/secrets.js";
import { WorkerDispatcher, type WorkerSource } from "./gpu/dispatch.js";
import { combineWorkerSources, RemoteWorkers } from "./gpu/remote.js";
import { pythonWorkerCommand, WorkerSupervisor } from "./gpu/supervisor.js";
import type { LoraIndex } from "./pool/index.js";
import { LanceLoraIndex } from "./pool/lancedb-index.js";
import { LoraStore } from "./pool/store.js";
import { CommandRegistry, type CommandContext, type PoolStatus } from "./bots/commands.js";
import { ChatCore } from "./bots/core.js";
import { download } from "./pool/download.js";
import { rm } from "node:fs/promises";
import { crawlSources, hostJobs, stateFile } from "./scheduler/jobs.js";
import { Scheduler } from "./scheduler/scheduler.js";
import { ENCODER, GATES, ModelRegistry } from "./models/registry.js";
import { reloadWorkers, retrainModel, writeCaptionedLoras, writeRatedExamples } from "./models/retrain.js";
import { reembedPool } from "./pool/reembed.js";
import type { JobState, StateFile } from "./scheduler/state.js";
import { builtinPlugin } from "./builtins.js";
import { PluginRegistry } from "./plugins.js";
import { ingestLora, type IngestMetadata } from "./pool/ingest.js";
import { GenerationStore } from "./pipeline/generations.js";
import { ImaginePipeline } from "./pipeline/imagine.js";
import { FairQueue } from "./pipeline/queue.js";
import { Retriever } from "./pipeline/retrieval.js";
import { TextEncoder } from "./pipeline/text-encoder.js";

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

/** The Python that runs local workers and the gate trainer. */
export function workerPython(config: Config): string {
  return config.workers.python || [join(REPO_ROOT, ".venv", "bin", "python")].find(existsSync) || "python3";
}

export interface Models {
  gates?: ModelRegistry;
  encoder?: ModelRegistry;
}

/** The versions of the gates and the LoRA encoder (data/models), each started from the bundle's; a kind the
 *  bundle does not have is absent. */
export async function openModels(config: Config): Promise<Models> {
  const bundle = resolve(config.bundle_dir);
  const root = join(resolve(config.data_dir), "models");
  const gates = join(bundle, "gates", "gates.safetensors");
  const encoder = join(bundle, "encoder", "encoder.json");
  return {
    gates: existsSync(gates) ? await ModelRegistry.open(root, gates, GATES) : undefined,
    encoder: existsSync(encoder) ? await ModelRegistry.open(root, join(bundle, "encoder"), ENCODER) : undefined,
  };
}

/** Start the configured workers and wait until they answer; `log` gets their stderr and supervision notes. */
export async function startWorkers(config: Config, secrets: Secrets, log: (line: string) => void,
  given?: Models): Promise<Workers> {
  const python = workerPython(config);
  // Every process's workers (serve, crawl, pool add) embed and draw with the served versions.
  const models = given ?? await openModels(config);
  const supervisor = new WorkerSupervisor({
    workers: config.workers.local.map(({ device, model }) => ({
      // Proving-ground workers serve the promoted gates (the served file's path never changes).
      ...pythonWorkerCommand(python, device, model, model === "proving-ground" ? models.gates?.servingPath : undefined,
        model === "proving-ground" ? models.encoder?.servingPath : undefined),
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

export interface Host {
  config: Config;
  pool: Pool;
  workers: Workers;
  pipeline: ImaginePipeline;
  context: CommandContext;
  /** The conversation engine the chat adapters share. */
  core: ChatCore;
  /** Crawl and maintenance on their schedules; `startServing` starts it. */
  scheduler: Scheduler;
  generations: GenerationStore;
  plugins: PluginRegistry;
  dataDir: string;
  stop(): Promise<void>;
}

/** Everything /imagine needs, started: pool, workers, text encoder, queue, pipeline. */
export async function startHost(config: Config, secrets: Secrets, log: (line: string) => void): Promise<Host> {
  const dataDir = resolve(config.data_dir);
  const plugins = new PluginRegistry(config, log);
  await plugins.use(builtinPlugin);
  await plugins.load(config.plugins);
  const commands = new CommandRegistry();
  for (const command of plugins.commands) commands.add(command);
  const pool = await openPool(config);
  const encoder = await TextEncoder.load(resolve(config.text_encoder_dir));
  const models = await openModels(config);
  const workers = await startWorkers(config, secrets, log, models);
  try {
    const ingest = (path: string, metadata: IngestMetadata) =>
      ingestLora(path, metadata, { ...pool, embed: (file) => workers.dispatcher.embed(file) });
    if (config.seed_pool_from_bundle && (await pool.index.count()) === 0) await seedFromBundle(resolve(config.bundle_dir), ingest, log);
    const retriever = new Retriever(encoder, pool.index);
    const state = stateFile(config);
    const generations = await GenerationStore.open(config.lancedb_uri || join(dataDir, "lancedb"));
    const queue = new FairQueue({
      concurrency: Math.max(1, config.workers.local.length + config.workers.remote.length),
      perUser: config.queue.per_user, global: config.queue.global,
    });
    const pipeline = new ImaginePipeline({
      retriever, queue, dispatcher: workers.dispatcher, store: pool.store, generations, dataDir,
      postProcessors: plugins.postProcessors.map((processor) => processor.run),
      settings: {
        k: config.retrieval.k, minSimilarity: config.retrieval.min_similarity, fusion: config.generation.fusion,
        seedsPerPrompt: config.generation.seeds_per_prompt, steps: config.generation.steps,
        filters: { nsfw: config.retrieval.nsfw, family: (await workers.source.ready()[0]!.health()).family },
      },
    });
    const context: CommandContext = {
      commands, pipeline, retriever, index: pool.index, store: pool.store, generations, dataDir,
      k: config.retrieval.k, minSimilarity: config.retrieval.min_similarity,
      chat: chatSettings(config),
      addFromUrl: async (url, metadata) => {
        const file = await download(url, { tempDir: join(dataDir, "tmp"), maxBytes: config.chat.max_lora_mb * 1e6 });
        try {
          return await ingest(file.path, metadata);
        } finally {
          await rm(file.path, { force: true });
        }
      },
      status: () => poolStatus(pool, queue, workers, state),
    };
    const core = new ChatCore(context, log);
    const retrainOptions = (registry: ModelRegistry, settings: { steps: number; metrics: string[] }) => ({
      registry, python: workerPython(config), bundleDir: resolve(config.bundle_dir), workers: () => workers.source.ready(),
      steps: settings.steps, metrics: settings.metrics, evalPairs: config.scheduler.retrain.eval_pairs, log,
    });
    const gates = models.gates;
    const retrain = gates && (async (signal: AbortSignal) => (await retrainModel({
      ...retrainOptions(gates, config.scheduler.retrain),
      extras: (folder) => writeRatedExamples(generations, pool.store, dataDir, folder, config.scheduler.retrain.rated_min_score),
    }, signal)).summary);
    const encoderModels = models.encoder;
    const retrainEncoder = encoderModels && (async (signal: AbortSignal) => {
      const outcome = await retrainModel({
        ...retrainOptions(encoderModels, { steps: config.scheduler.retrain.encoder_steps, metrics: config.scheduler.retrain.encoder_metrics }),
        extras: (folder) => writeCaptionedLoras(pool.index, pool.store, folder),
      }, signal);
      if (outcome.promoted) void scheduler.trigger("reembed"); // the new encoder's embeddings, in the background
      return outcome.summary;
    });
    const scheduler: Scheduler = new Scheduler({
      state, log, timezone: config.scheduler.timezone || undefined,
      jobs: hostJobs({
        config, sources: crawlSources(config, secrets, plugins.crawlSources), state, ingest, index: pool.index, log, retrain, retrainEncoder,
        startRetrain: () => void scheduler.trigger("retrain"),
        reembed: async (signal) => {
          const version = await encoderVersion(workers);
          if (!version) return "no worker has a LoRA encoder; nothing to re-embed with";
          const report = await reembedPool({ index: pool.index, store: pool.store, encoderVersion: version, embed: (file, abort) => workers.dispatcher.embed(file, abort), signal, log });
          return `${report.reembedded} LoRAs re-embedded with ${version}${report.skipped.length ? `, ${report.skipped.length} skipped` : ""} in ${report.seconds} s`;
        },
      }),
    });
    const current = await encoderVersion(workers);
    if (current && (await pool.index.embeddedByOther(current, 1)).length > 0) {
      // The encoder changed since these LoRAs were embedded: bring them up to date, searching all the while.
      log(`[pool] some LoRAs were embedded by another encoder than ${current}: re-embedding them in the background`);
      void scheduler.trigger("reembed");
    }
    context.retrain = retrain && (async () => {
      if (scheduler.isRunning("retrain")) return "retraining is already running; /pool status shows when it ends";
      void scheduler.trigger("retrain", "manual");
      return "retraining started: a candidate is trained, measured on held-out LoRAs and promoted only if it is not worse";
    });
    // Another process (`autolora models promote`, `autolora retrain`) may change what is served: follow it.
    const following = setInterval(() => {
      for (const registry of [models.gates, models.encoder]) {
        void registry?.refresh().then(async (changed) => {
          if (!changed) return;
          await reloadWorkers(registry, workers.source.ready(), log);
          if (registry.kind.name === "encoder") void scheduler.trigger("reembed");
        }).catch((error: unknown) => log(`[models] ${error instanceof Error ? error.message : String(error)}`));
      }
    }, 5000);
    following.unref();
    // Enough new ratings are a reason to retrain too (checked every ten minutes).
    const ratingsWatch = retrain && config.scheduler.retrain.after_new_ratings > 0 ? setInterval(() => {
      void (async () => {
        const job = (await state.read()).jobs.retrain;
        const since = new Date(job?.lastRun ?? 0);
        if (scheduler.isRunning("retrain") || (await generations.ratingsSince(since)) < config.scheduler.retrain.after_new_ratings) return;
        log(`[scheduler] ${config.scheduler.retrain.after_new_ratings}+ new ratings since the last retrain: retraining`);
        await scheduler.trigger("retrain");
      })().catch((error: unknown) => log(`[scheduler] ratings check: ${error instanceof Error ? error.message : String(error)}`));
    }, 600_000) : undefined;
    ratingsWatch?.unref();
    return {
      config, pool, workers, pipeline, context, core, scheduler, generations, plugins, dataDir,
      stop: async () => {
        clearInterval(following);
        clearInterval(ratingsWatch);
        await scheduler.stop();
        await queue.idle().catch(() => undefined);
        await workers.stop();
        await encoder.close();
      },
    };
  } catch (error) {
    await workers.stop();
    await encoder.close();
    throw error;
  }
}

export function chatSettings(config: Config): CommandContext["chat"] {
  return {
    admins: config.admins, reactions: config.chat.reactions, perMinute: config.chat.per_minute, perDay: config.chat.per_day,
    maxPromptChars: config.chat.max_prompt_chars, progressIntervalMs: config.chat.progress_interval_ms,
  };
}

async function poolStatus(pool: Pool, queue: FairQueue, workers: Workers, state: StateFile): Promise<PoolStatus> {
  const ready = workers.source.ready();
  const answering = await Promise.all(ready.map(async (worker) => {
    const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error("no answer in 3 s")), 3000).unref());
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
    loras: await pool.index.count({}), blocked: await pool.index.count({ state: "blocked" }),
    lastCrawl: lastCrawl((await state.read()).jobs.crawl),
    queue: { waiting: stats.waiting, running: stats.running }, workers: [...answering, ...others],
  };
}

/** The LoRA encoder the workers embed with (the first ready one says). */
async function encoderVersion(workers: Workers): Promise<string | null> {
  const worker = workers.source.ready()[0];
  return worker ? (await worker.health()).encoder_version ?? null : null;
}

function lastCrawl(job: JobState | undefined): string | null {
  if (!job?.lastFinished) return null;
  const outcome = job.lastOutcome === "ok" ? job.lastSummary : `${job.lastOutcome}: ${job.lastError}`;
  return `${job.lastFinished} (${outcome})`;
}

/** The proving-ground bundle's pool into an empty index, with the preview captions the bundle records. */
async function seedFromBundle(bundleDir: string, ingest: (path: string, metadata: IngestMetadata) => Promise<unknown>,
  log: (line: string) => void): Promise<void> {
  const index = join(bundleDir, "pool", "pool.json");
  if (!existsSync(index)) return;
  const records = (JSON.parse(readFileSync(index, "utf8")) as { loras: BundleLora[] }).loras;
  log(`[pool] the pool is empty: adding the bundle's ${records.length} LoRAs`);
  for (const [number, record] of records.entries()) {
    await ingest(join(bundleDir, record.file), {
      name: record.id, source: "bundle", captions: record.previews.map((preview) => preview.caption),
    });
    if ((number + 1) % 40 === 0 || number + 1 === records.length) log(`[pool] ${number + 1}/${records.length} added`);
  }
}

interface BundleLora {
  id: string;
  file: string;
  previews: Array<{ caption: string }>;
}
