// A host for adapter tests and the burst benchmark: the real text encoder, LanceDB, queue, pipeline and sharp, three LoRAs whose
// embeddings sit where their names embed, and the protocol fake (fixtures/fake-worker.mjs) as the worker.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BUILTIN_COMMANDS } from "../bots/builtin-commands.js";
import { CommandRegistry, type ChatSettings, type CommandContext } from "../bots/commands.js";
import { ChatCore } from "../bots/core.js";
import { WorkerDispatcher } from "../gpu/dispatch.js";
import { WorkerSupervisor } from "../gpu/supervisor.js";
import type { LoraRecord } from "../pool/index.js";
import { LanceLoraIndex } from "../pool/lancedb-index.js";
import { LoraStore } from "../pool/store.js";
import { download } from "../pool/download.js";
import { ingestLora } from "../pool/ingest.js";
import { GenerationStore } from "../pipeline/generations.js";
import { ImaginePipeline } from "../pipeline/imagine.js";
import { FairQueue } from "../pipeline/queue.js";
import { Retriever } from "../pipeline/retrieval.js";
import { TextEncoder } from "../pipeline/text-encoder.js";

const root = join(import.meta.dirname, "..", "..");

export interface FakeHostOptions {
  chat?: Partial<ChatSettings>;
  queue?: { perUser: number; global: number };
  /** The fake worker's time per step (ms). Default 30. */
  stepMs?: number;
  /** Sampling steps per job; 0 (default) leaves it to the worker (4). */
  steps?: number;
}

export async function fakeHost(options: FakeHostOptions = {}) {
  const data = await mkdtemp(join(tmpdir(), "autolora-fake-host-"));
  const encoder = await TextEncoder.load(join(root, "build", "text-encoder"));
  const supervisor = new WorkerSupervisor({
    workers: [{ command: process.execPath, args: [join(root, "test", "fixtures", "fake-worker.mjs")], env: { FAKE_STEP_MS: String(options.stepMs ?? 30), FAKE_EMBED_DIM: String(encoder.dimension) } }],
    log: () => undefined,
  });
  await supervisor.start();
  const index = await LanceLoraIndex.open({ uri: join(data, "lancedb") });
  const names = ["hexagon shapes", "diagonal stripes", "five-pointed stars"];
  const vectors = await encoder.embed(names);
  await index.upsert(names.map((name, n): LoraRecord => ({
    id: String(n + 1).repeat(64), name, source: "test", url: "", family: "proving-ground", format: "diffusers",
    ranks: [4], modules: 10, trigger_words: [], tags: [], captions: [], license: "", nsfw: false, state: "active",
    file: "", bytes: 100, vector: Array.from(vectors[n]!), encoder_version: "t", added_at: new Date().toISOString(),
  })));
  const store = new LoraStore(join(data, "pool"));
  const generations = await GenerationStore.open(join(data, "lancedb"));
  const retriever = new Retriever(encoder, index);
  const dispatcher = new WorkerDispatcher(supervisor);
  const queue = new FairQueue({ concurrency: 1, perUser: 3, global: 20, ...options.queue });
  const pipeline = new ImaginePipeline({
    retriever, queue, dispatcher,
    store, generations, dataDir: data,
    settings: { k: 2, minSimilarity: 0.2, fusion: "gated", seedsPerPrompt: 4, steps: options.steps ?? 0, filters: {} },
  });
  const commands = new CommandRegistry();
  for (const command of BUILTIN_COMMANDS) commands.add(command);
  const context: CommandContext = {
    commands, pipeline, retriever, index, store, generations, dataDir: data, k: 2, minSimilarity: 0.2,
    chat: {
      admins: ["discord:role:100000000000000777", "slack:UADMIN"], reactions: { "👍": 1, "👎": -1, "⭐": 2 },
      perMinute: 0, perDay: 0, maxPromptChars: 1000, progressIntervalMs: 0, ...options.chat,
    },
    // As the host does it, except that the test's own HTTP server on 127.0.0.1 is allowed.
    addFromUrl: async (url, metadata) => {
      const file = await download(url, { tempDir: join(data, "tmp"), maxBytes: 10e6, allowLoopback: true });
      try {
        return await ingestLora(file.path, metadata, { store, index, embed: (path) => dispatcher.embed(path) });
      } finally {
        await rm(file.path, { force: true });
      }
    },
    status: async () => ({
      loras: await index.count({}), blocked: await index.count({ state: "blocked" }), lastCrawl: null,
      queue: { waiting: queue.stats().waiting, running: queue.stats().running }, workers: [{ id: "fake", state: "ready" }],
    }),
  };
  const core = new ChatCore(context);
  return {
    data, context, core, generations, index, store, queue,
    /** The fake worker's /embed. */
    embed: (path: string, signal?: AbortSignal) => dispatcher.embed(path, signal),
    /** Ingest a local file as the host does (the fake worker embeds it). */
    ingest: (path: string, metadata: Parameters<typeof ingestLora>[1]) => ingestLora(path, metadata, { store, index, embed: (file) => dispatcher.embed(file) }),
    stop: async () => { await supervisor.stop(); await encoder.close(); },
  };
}
