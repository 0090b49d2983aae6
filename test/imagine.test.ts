// /imagine through the real host pieces (text encoder, LanceDB, queue, supervisor, sharp) with the protocol fake
// as the worker: the right LoRAs are retrieved and sent, images land on disk with their metadata, and the
// generation and its ratings are recorded.
import { existsSync } from "node:fs";
import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as lancedb from "@lancedb/lancedb";
import { Field, Schema, Utf8 } from "apache-arrow";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WorkerDispatcher } from "../src/gpu/dispatch.js";
import type { GenerateRequest, JobEndEvent } from "../src/gpu/protocol.js";
import { infoText, resultMessage } from "../src/bots/imagine-flow.js";
import { WorkerSupervisor } from "../src/gpu/supervisor.js";
import type { LoraRecord } from "../src/pool/index.js";
import { LanceLoraIndex } from "../src/pool/lancedb-index.js";
import { LoraStore } from "../src/pool/store.js";
import { GenerationStore } from "../src/pipeline/generations.js";
import { ImaginePipeline, type ImagineUpdate } from "../src/pipeline/imagine.js";
import { readPngText } from "../src/pipeline/png-text.js";
import { FairQueue, QueueFullError } from "../src/pipeline/queue.js";
import { Retriever } from "../src/pipeline/retrieval.js";
import { TextEncoder } from "../src/pipeline/text-encoder.js";

const root = join(import.meta.dirname, "..");
const fakeWorker = join(import.meta.dirname, "fixtures", "fake-worker.mjs");
let encoder: TextEncoder;
let supervisor: WorkerSupervisor;

beforeAll(async () => {
  encoder = await TextEncoder.load(join(root, "build", "text-encoder"));
  supervisor = new WorkerSupervisor({ workers: [{ command: process.execPath, args: [fakeWorker] }], log: () => undefined });
  await supervisor.start();
});
afterAll(async () => {
  await supervisor.stop();
  await encoder.close();
});

async function setup(settings: Partial<ConstructorParameters<typeof ImaginePipeline>[0]["settings"]> = {}, queueCaps = { perUser: 3, global: 10 },
  answer: (end: JobEndEvent) => JobEndEvent = (end) => end) {
  const data = await mkdtemp(join(tmpdir(), "autolora-imagine-"));
  const index = await LanceLoraIndex.open({ uri: join(data, "lancedb") });
  // Three LoRAs whose embeddings sit where their descriptions embed, so retrieval is predictable.
  const concepts = ["a hexagon, six-sided shape", "diagonal stripes, striped pattern", "a five-pointed star"];
  const vectors = await encoder.embed(concepts);
  const records: LoraRecord[] = concepts.map((name, n) => ({
    id: String(n + 1).repeat(64), name, source: "test", url: "", family: "proving-ground", format: "diffusers",
    ranks: [4], modules: 10, trigger_words: [], tags: [], captions: [], license: "", nsfw: false, state: "active",
    file: `${String(n + 1).repeat(64)}.safetensors`, bytes: 100, vector: Array.from(vectors[n]!), encoder_version: "t",
    added_at: new Date().toISOString(),
  }));
  await index.upsert(records);
  const sent: GenerateRequest[] = [];
  const dispatcher = new WorkerDispatcher(supervisor);
  const pipeline = new ImaginePipeline({
    retriever: new Retriever(encoder, index), queue: new FairQueue({ concurrency: 1, ...queueCaps }),
    dispatcher: { generate: async (request, options) => { sent.push(request); return answer(await dispatcher.generate(request, options)); } },
    store: new LoraStore(join(data, "pool")), generations: await GenerationStore.open(join(data, "lancedb")),
    dataDir: data,
    settings: { k: 2, minSimilarity: 0.2, fusion: "gated", seedsPerPrompt: 4, steps: 0, filters: {}, ...settings },
  });
  return { data, pipeline, sent, generations: (pipeline as unknown as { deps: { generations: GenerationStore } }).deps.generations };
}

describe("imagine", () => {
  it("retrieves the prompt's LoRAs, generates four seeds and keeps the images with their metadata", async () => {
    const { data, pipeline, sent, generations } = await setup();
    const updates: ImagineUpdate[] = [];
    const { result } = pipeline.imagine("a red hexagon with diagonal stripes", { user: "web:alice", seed: 7, onUpdate: (u) => updates.push(u) });
    const done = await result;
    expect(done.loras.map((hit) => hit.lora.name).sort()).toEqual(["a hexagon, six-sided shape", "diagonal stripes, striped pattern"]);
    expect(sent[0]).toMatchObject({ prompt: "a red hexagon with diagonal stripes", seeds: [7, 8, 9, 10], fusion: "gated" });
    expect(sent[0]!.loras!.map((lora) => lora.path)).toEqual(done.loras.map((hit) => join(data, "pool", `${hit.lora.id}.safetensors`)));
    expect(updates.map((u) => u.type)).toEqual(["started", "retrieved", ...Array(4).fill("progress")]);

    const grid = await readFile(done.files.grid);
    expect(await sharp(grid).metadata()).toMatchObject({ format: "png", width: 8, height: 8 }); // 2x2 of 1 px x4
    const parameters = JSON.parse(readPngText(grid).parameters!);
    expect(parameters).toMatchObject({ prompt: "a red hexagon with diagonal stripes", seeds: [7, 8, 9, 10], fusion: "gated",
      model_version: "fake-1" });
    expect(parameters.loras.map((lora: { similarity: number }) => lora.similarity).every((s: number) => s > 0.2)).toBe(true);
    expect(JSON.parse(readPngText(await readFile(done.files.singles[2]!)).parameters!).seeds).toEqual([9]);
    expect((await sharp(await readFile(done.files.gridWebp)).metadata()).format).toBe("webp");

    const stored = await generations.get(done.generation.id);
    expect(stored).toMatchObject({ user: "web:alice", seeds: [7, 8, 9, 10], images: `generations/${done.generation.id}` });
    expect(stored!.timings.total_ms).toBeGreaterThan(0);
    expect(await generations.rate(done.generation.id, "web:bob", 1)).toBe(true);
    expect(await generations.rate(done.generation.id, "web:carol", -1)).toBe(true);
    expect(await generations.rate(done.generation.id, "web:carol", 1)).toBe(true); // changed their mind
    expect(await generations.rate("no-such-generation", "web:bob", 1)).toBe(false);
    expect((await generations.ratingsByLora()).map(({ up, down }) => [up, down])).toEqual([[2, 0], [2, 0]]);
  });

  it("asks for the gates under auto, and shows why a worker without trained gates fused directly", async () => {
    const note = "this worker has no trained gates for flux, so the LoRAs were added directly";
    const { pipeline, sent, generations } = await setup({ fusion: "auto" }, undefined,
      (end) => ({ ...end, fusion: "direct", fusion_note: note, gate_version: null }));
    const done = await pipeline.imagine("a red hexagon with diagonal stripes", { user: "web:alice", seed: 3 }).result;
    expect(sent[0]).toMatchObject({ fusion: "gated" });
    expect(done.generation).toMatchObject({ fusion: "direct", fusion_note: note });
    const stored = (await generations.get(done.generation.id))!;
    expect(stored).toMatchObject({ fusion: "direct", fusion_note: note });
    expect(infoText(stored)).toContain(`fusion: direct (${note})`);
    expect(resultMessage(stored, stored.loras, done.files.gridWebp, {}).text).toContain(`fusion direct (${note})`);
    expect(JSON.parse(readPngText(await readFile(done.files.grid)).parameters!)).toMatchObject({ fusion: "direct", fusion_note: note });
    // A worker that used what was asked says nothing more, and ℹ️ adds nothing.
    const plain = await setup({ fusion: "auto" });
    const usual = await plain.pipeline.imagine("a star", { user: "web:alice", seed: 1 }).result;
    expect(usual.generation.fusion_note).toBeUndefined();
    expect(infoText(usual.generation)).toContain(`fusion: ${usual.generation.fusion}\n`);
  });

  it("opens a generations table made before sizes and fusion notes, keeping its rows", async () => {
    const data = await mkdtemp(join(tmpdir(), "autolora-old-generations-"));
    const names = ["id", "user", "prompt", "seeds", "loras", "fusion", "model_version", "gate_version", "images", "timings", "created_at"];
    const old = { id: "g-old", user: "web:alice", prompt: "a star", seeds: "[1]", loras: "[]", fusion: "gated", model_version: "m",
      gate_version: "g1", images: "generations/g-old", timings: "{}", created_at: "2026-01-01T00:00:00.000Z" };
    const db = await lancedb.connect(join(data, "lancedb"));
    await db.createEmptyTable("generations", new Schema(names.map((name) => new Field(name, new Utf8(), false))));
    await (await db.openTable("generations")).add([old]);
    const generations = await GenerationStore.open(join(data, "lancedb"));
    const kept = (await generations.get("g-old"))!;
    expect(kept).toMatchObject({ prompt: "a star", fusion: "gated", gate_version: "g1" });
    expect(kept.fusion_note).toBeUndefined();
    await generations.add({ ...kept, id: "g-new", fusion: "direct", fusion_note: "no trained gates", gate_version: null });
    expect(await generations.get("g-new")).toMatchObject({ fusion: "direct", fusion_note: "no trained gates" });
  });

  it("uses no LoRA below the similarity floor, and says when the queue is full", async () => {
    const { pipeline, sent } = await setup({ minSimilarity: 0.99 }, { perUser: 1, global: 10 });
    const first = pipeline.imagine("a blue circle", { user: "web:alice" });
    expect(() => pipeline.imagine("another", { user: "web:alice" })).toThrow(QueueFullError);
    const done = await first.result;
    expect(done.loras).toEqual([]);
    expect(sent[0]).toMatchObject({ fusion: "none", loras: [] });
    expect(() => pipeline.imagine("   ", { user: "web:alice" })).toThrow(/the prompt is empty/);
    expect(existsSync(done.files.grid)).toBe(true);
  });
});
