// A host for adapter tests: the real text encoder, LanceDB, queue, pipeline and sharp, three LoRAs whose
// embeddings sit where their names embed, and the protocol fake (fixtures/fake-worker.mjs) as the worker.
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { builtinCommands, type CommandContext } from "../../src/bots/commands.js";
import { WorkerDispatcher } from "../../src/gpu/dispatch.js";
import { WorkerSupervisor } from "../../src/gpu/supervisor.js";
import type { LoraRecord } from "../../src/pool/index.js";
import { LanceLoraIndex } from "../../src/pool/lancedb-index.js";
import { LoraStore } from "../../src/pool/store.js";
import { GenerationStore } from "../../src/pipeline/generations.js";
import { ImaginePipeline } from "../../src/pipeline/imagine.js";
import { FairQueue } from "../../src/pipeline/queue.js";
import { Retriever } from "../../src/pipeline/retrieval.js";
import { TextEncoder } from "../../src/pipeline/text-encoder.js";

const root = join(import.meta.dirname, "..", "..");

export async function fakeHost() {
  const data = await mkdtemp(join(tmpdir(), "autolora-fake-host-"));
  const encoder = await TextEncoder.load(join(root, "build", "text-encoder"));
  const supervisor = new WorkerSupervisor({
    workers: [{ command: process.execPath, args: [join(root, "test", "fixtures", "fake-worker.mjs")], env: { FAKE_STEP_MS: "30" } }],
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
  const pipeline = new ImaginePipeline({
    retriever, queue: new FairQueue({ concurrency: 1, perUser: 3, global: 20 }), dispatcher: new WorkerDispatcher(supervisor),
    store, generations, dataDir: data,
    settings: { k: 2, minSimilarity: 0.2, fusion: "gated", seedsPerPrompt: 4, steps: 0, filters: {} },
  });
  const context: CommandContext = {
    commands: builtinCommands(), pipeline, retriever, index, store, k: 2, minSimilarity: 0.2,
    ingest: async () => { throw new Error("ingest is not part of this fake"); },
  };
  return {
    data, context, generations, index,
    stop: async () => { await supervisor.stop(); await encoder.close(); },
  };
}
