// The composition root. `createHost` wires parts it is given (pool, workers, text encoder, stores, plugins, model
// versions) into the queue, the /imagine pipeline, the chat commands and the scheduler's jobs; `startHost` opens
// the real parts from the configuration and hands them to it. Tests give createHost a fake worker instead.
import { join, resolve } from "node:path";
import { builtinPlugin } from "./builtins.js";
import { CommandRegistry, type CommandContext } from "./bots/commands.js";
import { chatSettings } from "./bots/chat-settings.js";
import { ChatCore } from "./bots/core.js";
import { poolStatus } from "./bots/pool-status.js";
import type { Config } from "./config/schema.js";
import type { Secrets } from "./config/secrets.js";
import { RedisQueue, redisUrlWithPassword } from "./gpu/redis-queue.js";
import { startWorkers, type Workers } from "./gpu/workers.js";
import { modelLifecycle, openModels, type Models } from "./models/lifecycle.js";
import { GenerationStore } from "./pipeline/generations.js";
import { CachedVotes } from "./pipeline/rating-prior.js";
import { ImaginePipeline } from "./pipeline/imagine.js";
import { JobJournal } from "./pipeline/journal.js";
import { FairQueue } from "./pipeline/queue.js";
import { Retriever, selectionSettings } from "./pipeline/retrieval.js";
import { TextEncoder } from "./pipeline/text-encoder.js";
import { PluginRegistry } from "./plugins.js";
import { ingestLora, ingestLoras, type IngestItem, type IngestMetadata, type IngestOptions, type IngestResult } from "./pool/ingest.js";
import { ingestFromUrl } from "./pool/ingest-url.js";
import { lancedbUri, openPool, seedFromBundle, type Pool } from "./pool/open.js";
import { PoolServer } from "./pool/pool-server.js";
import { backfillLoraText } from "./pool/text-backfill.js";
import { crawlSources, poolJobs, stateFile } from "./scheduler/jobs.js";
import { Scheduler } from "./scheduler/scheduler.js";

/** What the host is made of; `createHost` owns them from then on and closes them in `stop`. */
export interface HostParts {
  config: Config; secrets: Secrets; log: (line: string) => void; plugins: PluginRegistry; pool: Pool;
  textEncoder: TextEncoder; workers: Workers; generations: GenerationStore; models: Models;
}

export interface Host extends Omit<HostParts, "secrets" | "log" | "textEncoder" | "models"> {
  dataDir: string; queue: FairQueue; pipeline: ImaginePipeline; context: CommandContext;
  /** The conversation engine the chat adapters share. */
  core: ChatCore;
  /** Crawling, index upkeep and the models' life on their schedules; `startServing` starts it. */
  scheduler: Scheduler;
  /** LoRA files by hash for workers on other machines (workers.pool_server), when enabled. */
  poolServer?: PoolServer;
  /** Add a local LoRA file to the pool (stored, embedded by a worker, indexed). */
  ingest(path: string, metadata: IngestMetadata): Promise<IngestResult>;
  /** Add many local files in batches (one worker call and one index commit each); each file its result or error. */
  ingestMany(items: IngestItem[], options?: IngestOptions): Promise<Array<IngestResult | Error>>;
  stop(): Promise<void>;
}

export async function createHost(parts: HostParts): Promise<Host> {
  const { config, pool, workers, generations, plugins, log } = parts;
  const dataDir = resolve(config.data_dir);
  const commands = new CommandRegistry();
  for (const command of plugins.commands) commands.add(command);
  const retriever = new Retriever(parts.textEncoder, pool.index, new CachedVotes(() => generations.ratingsByLora()));
  const state = stateFile(config);
  // queue.backend redis: jobs pass on to Redis, where users take turns across hosts and workers pull them; the
  // host's own queue keeps the per-user and global caps.
  const redis = config.queue.backend === "redis" ? await RedisQueue.open({
    url: redisUrlWithPassword(config.queue.redis_url, parts.secrets.get("redisPassword")), prefix: config.queue.redis_prefix, log,
  }) : undefined;
  // A Redis host with no workers of its own has its new LoRAs embedded by the queue workers (at the ingest priority).
  const embedder = redis && config.workers.local.length + config.workers.remote.length === 0 ? redis : workers.dispatcher;
  const ingestDeps = {
    ...pool, embed: (file: string) => embedder.embed(file),
    embedMany: (files: string[]) => embedder.embedMany(files), embedText: parts.textEncoder,
  };
  const ingest = (path: string, metadata: IngestMetadata) => ingestLora(path, metadata, ingestDeps);
  const ingestMany = (items: IngestItem[], options?: IngestOptions) => ingestLoras(items, ingestDeps, options);
  const queue = new FairQueue({
    concurrency: redis ? config.queue.global : Math.max(1, config.workers.local.length + config.workers.remote.length),
    perUser: config.queue.per_user, global: config.queue.global,
  });
  const generator = redis ? { generate: redis.generate.bind(redis) } : workers.dispatcher;
  // With Redis, this host's turn-taking still decides which of its jobs goes next: it lets one job more into Redis
  // than there are queue workers (one waiting for each to take when it finishes), rechecked every few seconds.
  const followWorkers = async () => queue.setConcurrency((await redis!.workers().catch(() => [])).length + 1);
  if (redis) await followWorkers();
  const following = redis ? setInterval(() => void followWorkers(), 5_000).unref() : undefined;
  const family = (await workers.source.ready()[0]?.health())?.family ?? (await redis?.workers().catch(() => []))?.[0]?.family;
  const pipeline = new ImaginePipeline({
    retriever, queue, dispatcher: generator, store: pool.store, generations, dataDir,
    postProcessors: plugins.postProcessors.map((processor) => processor.run),
    settings: {
      k: config.retrieval.k, minSimilarity: config.retrieval.min_similarity, fusion: config.generation.fusion,
      ...selectionSettings(config.retrieval),
      seedsPerPrompt: config.generation.seeds_per_prompt, steps: config.generation.steps,
      filters: { nsfw: config.retrieval.nsfw, ...(family ? { family } : {}) },
    },
  });
  const lifecycle = modelLifecycle({ config, models: parts.models, workers, pool, generations, state, log, scheduler: () => scheduler });
  const scheduler: Scheduler = new Scheduler({
    state, log, timezone: config.scheduler.timezone || undefined,
    jobs: [...poolJobs({
      config, sources: crawlSources(config, parts.secrets, plugins.crawlSources), state, ingest, index: pool.index, log,
      startRetrain: lifecycle.retrainNow && (() => void scheduler.trigger("retrain")),
    }), ...lifecycle.jobs],
  });
  const served = config.workers.pool_server;
  const poolServer = served.enabled ? new PoolServer({
    store: pool.store, token: parts.secrets.require("workerToken", "the pool server (workers.pool_server)"), host: served.host, port: served.port, log,
  }) : undefined;
  await poolServer?.start().catch(async (error: unknown) => {
    await redis?.close();
    throw error;
  });
  const context: CommandContext = {
    commands, pipeline, retriever, index: pool.index, store: pool.store, generations, dataDir,
    k: config.retrieval.k, minSimilarity: config.retrieval.min_similarity, ...selectionSettings(config.retrieval), chat: chatSettings(config),
    addFromUrl: (url, metadata) => ingestFromUrl(url, metadata, {
      tempDir: join(dataDir, "tmp"), maxBytes: config.chat.max_lora_mb * 1e6, allowLoopback: config.scheduler.allow_loopback,
    }, ingest),
    status: () => poolStatus(pool.index, queue, workers, state, redis),
    journal: new JobJournal(join(dataDir, "jobs"), log),
    retrain: lifecycle.retrainNow,
  };
  return {
    config, pool, workers, generations, plugins, dataDir, queue, pipeline, context, core: new ChatCore(context, log), scheduler, ingest, ingestMany,
    ...(poolServer ? { poolServer } : {}),
    stop: async () => {
      await scheduler.stop();
      clearInterval(following);
      await queue.idle().catch(() => undefined);
      await redis?.close();
      await poolServer?.stop();
      await workers.stop();
      await parts.textEncoder.close();
    },
  };
}

/** Open the configured parts (plugins, pool, text encoder, model versions, workers) and wire them; an empty pool
 *  gets the proving-ground bundle's LoRAs. */
export async function startHost(config: Config, secrets: Secrets, log: (line: string) => void): Promise<Host> {
  const plugins = new PluginRegistry(config, log);
  await plugins.use(builtinPlugin);
  await plugins.load(config.plugins);
  const pool = await openPool(config, log);
  const textEncoder = await TextEncoder.load(resolve(config.text_encoder_dir));
  const models = await openModels(config);
  const workers = await startWorkers(config, secrets, log, models).catch(async (error: unknown) => {
    await textEncoder.close();
    throw error;
  });
  let host: Host | undefined;
  try {
    const generations = await GenerationStore.open(lancedbUri(config));
    host = await createHost({ config, secrets, log, plugins, pool, textEncoder, workers, generations, models });
    await backfillLoraText(pool, textEncoder, log);
    if (config.seed_pool_from_bundle) await seedFromBundle(resolve(config.bundle_dir), pool.index, host.ingestMany, log);
    return host;
  } catch (error) {
    await (host ? host.stop() : Promise.all([workers.stop(), textEncoder.close()]));
    throw error;
  }
}
