// A host for adapter tests and the burst benchmark: the real wiring (`createHost`) with the real text encoder,
// LanceDB, queue, pipeline and sharp, the protocol fake (test/fixtures/fake-worker.mjs) as its one worker, and three
// LoRAs whose embeddings sit where their names embed.
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ChatSettings } from "../bots/commands.js";
import { builtinPlugin } from "../builtins.js";
import { loadConfig } from "../config/load.js";
import { configSchema, type Config } from "../config/schema.js";
import { WorkerSupervisor } from "../gpu/supervisor.js";
import { supervisedWorkers } from "../gpu/workers.js";
import { createHost } from "../host.js";
import { GenerationStore } from "../pipeline/generations.js";
import { TextEncoder } from "../pipeline/text-encoder.js";
import { PluginRegistry } from "../plugins.js";
import type { LoraRecord } from "../pool/index.js";
import { LanceLoraIndex } from "../pool/lancedb-index.js";
import { LoraStore } from "../pool/store.js";

const root = join(import.meta.dirname, "..", "..");

export interface FakeHostOptions {
  chat?: Partial<ChatSettings>;
  queue?: { perUser: number; global: number; redis?: { port: number; password: string; prefix: string } };
  /** The fake worker's time per step (ms). Default 30. */
  stepMs?: number;
  /** Sampling steps per job; 0 (default) leaves it to the worker (4). */
  steps?: number;
  /** More settings for the fake worker (FAKE_CRASH_AT_STEP, …; see test/fixtures/fake-worker.mjs). */
  workerEnv?: Record<string, string>;
}

export const FAKE_HOST_ADMINS = ["discord:role:100000000000000777", "slack:UADMIN"];

/** The default configuration, pointed at a fresh data folder and set as the adapter tests expect. */
function fakeConfig(data: string, options: FakeHostOptions): Config {
  const defaults = loadConfig({}).config;
  const chat = { perMinute: 0, perDay: 0, maxPromptChars: 1000, progressIntervalMs: 0, ...options.chat };
  return configSchema.parse({
    ...defaults, data_dir: data, lancedb_uri: "", seed_pool_from_bundle: false, plugins: [],
    text_encoder_dir: join(root, "build", "text-encoder"), bundle_dir: join(root, "bundle"),
    workers: { ...defaults.workers, local: [{ device: "cpu", model: "fake" }], remote: [] },
    retrieval: { ...defaults.retrieval, k: 2, min_similarity: 0.2 },
    generation: { ...defaults.generation, fusion: "gated", seeds_per_prompt: 4, steps: options.steps ?? 0 },
    queue: {
      ...defaults.queue, per_user: options.queue?.perUser ?? 3, global: options.queue?.global ?? 20,
      ...(options.queue?.redis ? {
        backend: "redis", redis_url: `redis://127.0.0.1:${options.queue.redis.port}`, redis_prefix: options.queue.redis.prefix,
      } : {}),
    },
    // The adapter tests' own HTTP servers on 127.0.0.1 serve the LoRAs that /lora add downloads.
    scheduler: { ...defaults.scheduler, sources: [], allow_loopback: true },
    admins: chat.admins ?? FAKE_HOST_ADMINS,
    chat: {
      ...defaults.chat, reactions: chat.reactions ?? { "👍": 1, "👎": -1, "⭐": 2 }, per_minute: chat.perMinute,
      per_day: chat.perDay, max_prompt_chars: chat.maxPromptChars, progress_interval_ms: chat.progressIntervalMs,
    },
  });
}

export async function fakeHost(options: FakeHostOptions = {}) {
  const data = await mkdtemp(join(tmpdir(), "autolora-fake-host-"));
  const config = fakeConfig(data, options);
  const textEncoder = await TextEncoder.load(config.text_encoder_dir);
  const supervisor = new WorkerSupervisor({
    workers: [{
      command: process.execPath, args: [join(root, "test", "fixtures", "fake-worker.mjs")],
      env: { FAKE_STEP_MS: String(options.stepMs ?? 30), FAKE_EMBED_DIM: String(textEncoder.dimension), ...options.workerEnv },
    }],
    log: () => undefined,
  });
  await supervisor.start();
  const index = await LanceLoraIndex.open({ uri: join(data, "lancedb") });
  const names = ["hexagon shapes", "diagonal stripes", "five-pointed stars"];
  const vectors = await textEncoder.embed(names);
  // The stripes LoRA came with a description (its text embedding); the others with none.
  const [stripesText] = await textEncoder.embed(["a striped pattern"]);
  await index.upsert(names.map((name, n): LoraRecord => ({
    id: String(n + 1).repeat(64), name, source: "test", url: "", family: "proving-ground", format: "diffusers",
    ranks: [4], modules: 10, trigger_words: [], tags: [], captions: n === 1 ? ["a striped pattern"] : [], license: "", nsfw: false,
    state: "active", file: "", bytes: 100, vector: Array.from(vectors[n]!), encoder_version: "t", added_at: new Date().toISOString(),
    ...(n === 1 ? { text_vector: Array.from(stripesText!) } : {}),
  })));
  const plugins = new PluginRegistry(config, () => undefined);
  await plugins.use(builtinPlugin);
  const workers = supervisedWorkers(supervisor);
  const host = await createHost({
    config, secrets: loadConfig({ AUTOLORA_REDIS_PASSWORD: options.queue?.redis?.password }).secrets, log: () => undefined, plugins, pool: { index, store: new LoraStore(join(data, "pool")) },
    textEncoder, workers, generations: await GenerationStore.open(join(data, "lancedb")), models: {},
  });
  return {
    ...host, data, index, store: host.pool.store,
    /** The fake worker's /embed. */
    embed: (path: string, signal?: AbortSignal) => workers.dispatcher.embed(path, signal),
  };
}
