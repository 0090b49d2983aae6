// Ingest: validate → store by content → embed on a worker → one index write. Idempotent, and atomic under a
// failure at any step: nothing searchable, no stored copy left behind.
import { readdir, readFile, writeFile, mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { EmbedResult } from "../src/gpu/protocol.js";
import type { LoraIndex } from "../src/pool/index.js";
import { ingestLora, ingestLoras, type IngestResult } from "../src/pool/ingest.js";
import { LanceLoraIndex } from "../src/pool/lancedb-index.js";
import { InvalidLoraFileError } from "../src/pool/safetensors.js";
import { LoraStore, sha256File } from "../src/pool/store.js";

const bundle = join(import.meta.dirname, "..", "bundle");
const hexagon = join(bundle, "pool", "shape-hexagon-01.safetensors");
const striped = join(bundle, "pool", "style-striped-01.safetensors");

async function fakeEmbed(path: string): Promise<EmbedResult> {
  const sha256 = await sha256File(path);
  const vector = [...Buffer.from(sha256.slice(0, 16), "hex")].map((byte) => byte - 127.5);
  const norm = Math.hypot(...vector);
  return { sha256, format: "diffusers", family: "proving-ground", modules: 34, ranks: [4], unknown_keys: [],
    embedding: vector.map((value) => value / norm), dim: 8, encoder_version: "test-enc" };
}

async function pool(embed = fakeEmbed) {
  const data = await mkdtemp(join(tmpdir(), "autolora-pool-"));
  const store = new LoraStore(join(data, "pool"));
  const index = await LanceLoraIndex.open({ uri: join(data, "lancedb") });
  return { data, store, index, deps: { store, index, embed } };
}

const storedFiles = async (store: LoraStore) => (await readdir(store.root).catch(() => [] as string[]));

describe("LoRA ingest", () => {
  it("adds a file once, by content, searchable by its embedding", async () => {
    const { store, index, deps } = await pool();
    const first = await ingestLora(hexagon, { name: "Hexagons", tags: ["shape"], source: "bundle" }, deps);
    expect(first.status).toBe("added");
    expect(first.lora).toMatchObject({ name: "Hexagons", family: "proving-ground", state: "active", tags: ["shape"] });
    const sha = await sha256File(hexagon);
    expect(first.lora.id).toBe(sha);
    expect(await readFile(store.pathOf(sha))).toEqual(await readFile(hexagon));
    // The same bytes under another name are the same LoRA.
    const copy = join(await mkdtemp(join(tmpdir(), "autolora-copy-")), "renamed.safetensors");
    await writeFile(copy, await readFile(hexagon));
    const again = await ingestLora(copy, { name: "Other name" }, deps);
    expect(again.status).toBe("exists");
    expect(again.lora.name).toBe("Hexagons");
    expect(await index.count()).toBe(1);
    expect(await storedFiles(store)).toEqual([`${sha}.safetensors`]);
    const { embedding } = await fakeEmbed(hexagon);
    expect((await index.search(embedding!, 1))[0]?.lora.id).toBe(sha);
  });

  it("embeds the LoRA's text beside its weights: its source's name, tags and captions, and its file's training tags", async () => {
    const { index, deps } = await pool();
    // The hexagon LoRA with kohya's training metadata in its header (the tensors' offsets are relative to the data).
    const whole = await readFile(hexagon);
    const length = Number(whole.readBigUInt64LE(0));
    const header = JSON.parse(whole.subarray(8, 8 + length).toString("utf8"));
    header.__metadata__ = { ...header.__metadata__, ss_tag_frequency: JSON.stringify({ "10_hex": { "hexagon": 30, "six sides": 12 } }) };
    const json = Buffer.from(JSON.stringify(header));
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(json.length));
    const tagged = join(await mkdtemp(join(tmpdir(), "autolora-kohya-")), "hexagons.safetensors");
    await writeFile(tagged, Buffer.concat([prefix, json, whole.subarray(8 + length)]));
    const embedded: string[] = [];
    const embedText = {
      async embed(texts: string[]) {
        embedded.push(...texts);
        return texts.map((_, n) => Array.from({ length: 8 }, (_, d) => (d === n % 8 ? 1 : 0)));
      },
    };
    const added = await ingestLora(tagged, { name: "Hexagons", tags: ["shape"], captions: ["a hexagon"] }, { ...deps, embedText });
    expect(embedded).toEqual(["Hexagons", "shape", "a hexagon", "hexagon, six sides"]);
    const record = await index.get(added.lora.id);
    expect(record!.text_vector![0]).toBeCloseTo(0.5, 5); // the unit mean of four unit pieces
    expect(record!.text_checked).toBe(true);
    // A LoRA that came with nothing written about it has no text embedding (its weights alone score it).
    embedded.length = 0;
    const bare = await ingestLora(striped, {}, { ...deps, embedText });
    expect(embedded).toEqual([]);
    expect((await index.get(bare.lora.id))!.text_vector).toBeUndefined();
    expect(await index.textUnchecked()).toEqual([]);
  });

  it("refuses a malformed file before anything is stored", async () => {
    const { store, index, deps } = await pool();
    const folder = await mkdtemp(join(tmpdir(), "autolora-bad-"));
    const truncated = join(folder, "truncated.safetensors");
    const whole = await readFile(striped);
    await writeFile(truncated, whole.subarray(0, whole.length - 100));
    await expect(ingestLora(truncated, {}, deps)).rejects.toMatchObject({ code: "out-of-bounds" });
    const pickle = join(folder, "model.ckpt");
    await writeFile(pickle, Buffer.concat([Buffer.from("PK\x03\x04"), Buffer.alloc(64)]));
    await expect(ingestLora(pickle, {}, deps)).rejects.toBeInstanceOf(InvalidLoraFileError);
    expect(await index.count()).toBe(0);
    expect(await storedFiles(store)).toEqual([]);
  });

  it("leaves nothing searchable and no stored copy when the worker or the index fails half way", async () => {
    const failingEmbed = async () => { throw new Error("worker crashed while embedding"); };
    const broken = await pool(failingEmbed);
    await expect(ingestLora(striped, {}, broken.deps)).rejects.toThrow("worker crashed while embedding");
    expect(await broken.index.count()).toBe(0);
    expect(await storedFiles(broken.store)).toEqual([]);

    const { store, index, deps } = await pool();
    const failingIndex: LoraIndex = Object.assign(Object.create(index), {
      upsert: async () => { throw new Error("disk full"); },
      get: index.get.bind(index),
    });
    await expect(ingestLora(striped, {}, { ...deps, index: failingIndex })).rejects.toThrow("disk full");
    expect(await index.count()).toBe(0);
    expect(await storedFiles(store)).toEqual([]);
    // The same file goes in cleanly afterwards.
    expect((await ingestLora(striped, {}, deps)).status).toBe("added");
  });

  it("runs two ingests of the same file at once as one", async () => {
    const { index, deps } = await pool();
    const results = await Promise.all([ingestLora(hexagon, {}, deps), ingestLora(hexagon, {}, deps)]);
    expect(results.map((r) => r.status).sort()).toEqual(["added", "exists"]);
    expect(await index.count()).toBe(1);
  });

  it("adds the same file to two pools of one process at once, each its own add", async () => {
    // Two hosts in one process (as the Redis queue's tests run them) seed their pools from the bundle together.
    const [first, second] = await Promise.all([pool(), pool()]);
    const results = await Promise.all([ingestLoras([{ file: hexagon }, { file: striped }], first!.deps),
      ingestLoras([{ file: hexagon }, { file: striped }], second!.deps)]);
    expect(results.flat().map((result) => (result as IngestResult).status)).toEqual(["added", "added", "added", "added"]);
    expect([await first!.index.count(), await second!.index.count()]).toEqual([2, 2]);
  });
});

describe("adding many LoRAs at once", () => {
  const files = ["shape-hexagon-01", "style-striped-01", "shape-star-01", "style-dotted-01", "shape-ring-01"]
    .map((name) => join(bundle, "pool", `${name}.safetensors`));

  /** The pool with its worker and index calls counted: a batch should be one of each. */
  async function counted(embedOne: (path: string) => Promise<EmbedResult | Error> = fakeEmbed) {
    const base = await pool();
    const calls = { embedMany: 0, upsert: 0 };
    const index: LoraIndex = Object.assign(Object.create(base.index), {
      upsert: async (records: Parameters<LoraIndex["upsert"]>[0]) => { calls.upsert += 1; return base.index.upsert(records); },
    });
    const embedMany = async (paths: string[]) => {
      calls.embedMany += 1;
      return Promise.all(paths.map((path) => embedOne(path).catch((error: Error) => error)));
    };
    return { ...base, calls, deps: { ...base.deps, index, embedMany } };
  }

  it("adds a batch with one worker call and one index commit; a bad file, a duplicate and a known LoRA each get their answer", async () => {
    const { store, index, calls, deps } = await counted();
    const known = await ingestLora(files[4]!, { name: "known ring" }, deps);
    calls.embedMany = calls.upsert = 0;
    const folder = await mkdtemp(join(tmpdir(), "autolora-batch-"));
    const pickle = join(folder, "model.safetensors");
    await writeFile(pickle, Buffer.concat([Buffer.from("PK\x03\x04"), Buffer.alloc(64)]));
    const items = [
      { file: files[0]!, metadata: { name: "hexagons" } }, { file: pickle }, { file: files[1]! }, { file: files[0]!, metadata: { name: "again" } },
      { file: files[2]! }, { file: files[3]! }, { file: files[4]! }, { file: join(folder, "absent.safetensors") },
    ];
    const progress: Array<[number, number]> = [];
    const outcomes = await ingestLoras(items, deps, { batchSize: 8, onProgress: (done, total) => progress.push([done, total]) });
    expect(calls).toEqual({ embedMany: 1, upsert: 1 });
    expect(progress).toEqual([[8, 8]]);
    const statuses = outcomes.map((outcome) => outcome instanceof Error ? outcome.constructor.name : outcome.status);
    expect(statuses).toEqual(["added", "InvalidLoraFileError", "added", "exists", "added", "added", "exists", "Error"]);
    // The second copy of the hexagon file is the same LoRA, under the name the first gave it.
    expect((outcomes[3] as IngestResult).status).toBe("exists");
    expect((outcomes[3] as IngestResult).lora).toMatchObject({ id: (outcomes[0] as IngestResult).lora.id, name: "hexagons" });
    expect((outcomes[6] as IngestResult).lora).toMatchObject({ id: known.lora.id, name: "known ring" });
    expect(String(outcomes[7])).toMatch(/absent\.safetensors/);
    expect(await index.count()).toBe(5);
    // Nothing staged is left behind: only the five LoRAs' files.
    expect((await storedFiles(store)).sort()).toEqual((await Promise.all(files.map(sha256File))).map((sha) => `${sha}.safetensors`).sort());
  });

  it("fails a file the worker refuses alone, and a failed commit fails the batch leaving nothing behind", async () => {
    const refusedSha = await sha256File(files[1]!);
    const picky = await counted(async (path) => (await sha256File(path)) === refusedSha
      ? new Error("incompatible-lora: a LoRA for flux, this worker runs proving-ground") : fakeEmbed(path));
    const outcomes = await ingestLoras(files.map((file) => ({ file })), picky.deps);
    expect(outcomes.map((outcome) => outcome instanceof Error ? outcome.message : outcome.status))
      .toEqual(["added", "incompatible-lora: a LoRA for flux, this worker runs proving-ground", "added", "added", "added"]);
    expect(await picky.store.has(refusedSha)).toBe(false);
    expect(await picky.index.count()).toBe(4);

    const { store, index, deps } = await counted();
    const failing: LoraIndex = Object.assign(Object.create(index), { upsert: async () => { throw new Error("disk full"); } });
    const failed = await ingestLoras(files.map((file) => ({ file })), { ...deps, index: failing });
    expect(failed.every((outcome) => outcome instanceof Error && outcome.message === "disk full")).toBe(true);
    expect(await index.count()).toBe(0);
    expect(await storedFiles(store)).toEqual([]);
    // The same files go in cleanly afterwards, in batches of two (three commits).
    const again = await ingestLoras(files.map((file) => ({ file })), deps, { batchSize: 2 });
    expect(again.map((outcome) => (outcome as IngestResult).status)).toEqual(Array(5).fill("added"));
  });

  it("embeds every LoRA's text in requests of at most 64 texts, each LoRA its own mean", async () => {
    const { index, deps } = await counted();
    const requests: number[] = [];
    const embedText = {
      async embed(texts: string[]) {
        requests.push(texts.length);
        return texts.map((text) => Array.from({ length: 8 }, (_, d) => (d === text.length % 8 ? 1 : 0)));
      },
    };
    const captions = Array.from({ length: 12 }, (_, n) => "x".repeat(n + 1));
    const metadata = (n: number) => ({ name: `lora ${n}`, trigger_words: ["t"], tags: ["s"], captions });
    const outcomes = await ingestLoras(files.map((file, n) => ({ file, metadata: metadata(n) })), { ...deps, embedText });
    expect(requests).toEqual([64, 11]); // 5 LoRAs × (name, trigger words, tags, 12 captions)
    for (const outcome of outcomes) {
      const record = await index.get((outcome as IngestResult).lora.id);
      expect(record!.text_checked).toBe(true);
      expect(Math.hypot(...record!.text_vector!)).toBeCloseTo(1, 5);
    }
  });
});

describe("a family with no LoRA encoder yet", () => {
  // What a worker without an encoder answers: everything it read of the file, no embedding, and why.
  const noEncoder = async (path: string): Promise<EmbedResult> => ({
    ...(await fakeEmbed(path)), embedding: null, dim: null, encoder_version: null,
    no_embedding: "this worker has no LoRA encoder for proving-ground",
  });
  // Each distinct text gets its own axis of an 8-d space, so a LoRA's own words find it and nothing else.
  const axes = new Map<string, number>();
  const embedText = {
    async embed(texts: string[]) {
      return texts.map((text) => {
        if (!axes.has(text)) axes.set(text, axes.size % 8);
        return Array.from({ length: 8 }, (_, d) => (d === axes.get(text) ? 1 : 0));
      });
    },
  };

  it("indexes a LoRA by its text, says so, and a search with its words finds it; one with no text is stored but not searchable", async () => {
    const { data, store, index, deps } = await pool(noEncoder);
    const hex = await ingestLora(hexagon, { name: "hexagon", source: "civitai" }, { ...deps, embedText });
    expect(hex.status).toBe("added");
    expect(hex.lora.embedding).toBe("text");
    expect(hex.note).toMatch(/^searchable by its text only: this worker has no LoRA encoder for proving-ground/);
    const [query] = await embedText.embed(["hexagon"]);
    expect((await index.search(query!, 3)).map((hit) => hit.lora.id)).toEqual([hex.lora.id]);

    const bare = await ingestLora(striped, {}, { ...deps, embedText: { embed: async () => [] } });
    expect(bare.lora.embedding).toBe("none");
    expect(bare.note).toMatch(/^stored but not searchable: .*came with no text/);
    expect(await store.has(bare.lora.id)).toBe(true);
    expect((await index.get(bare.lora.id))!.embedding).toBe("none");
    // A search never returns it, however it is asked.
    expect((await index.search(query!, 5)).map((hit) => hit.lora.id)).toEqual([hex.lora.id]);
    expect((await index.search([0, 0, 0, 0, 0, 0, 0, 1], 5)).map((hit) => hit.lora.id)).not.toContain(bare.lora.id);
    // Nor after the pool is opened again.
    const reopened = await LanceLoraIndex.open({ uri: join(data, "lancedb") });
    expect((await reopened.search([0, 0, 0, 0, 0, 0, 0, 1], 5)).map((hit) => hit.lora.id)).toEqual([hex.lora.id]);
    expect([await index.count({ embedding: "weights" }), await index.count({ embedding: "text" }),
      await index.count({ embedding: "none" })]).toEqual([0, 1, 1]);
  });

  it("re-embeds text-only LoRAs by their weights once an encoder exists", async () => {
    const { store, index, deps } = await pool(noEncoder);
    const hex = await ingestLora(hexagon, { name: "hexagon" }, { ...deps, embedText });
    const { reembedPool } = await import("../src/pool/reembed.js");
    const report = await reembedPool({ index, store, encoderVersion: "test-enc", embed: fakeEmbed });
    expect(report.reembedded).toBe(1);
    const record = await index.get(hex.lora.id);
    expect(record!.embedding).toBe("weights");
    expect(record!.vector).toEqual((await fakeEmbed(hexagon)).embedding!.map((value) => expect.closeTo(value, 5)));
    expect(record!.text_vector).toBeDefined(); // its text stays for the hybrid score
    // A worker still without an encoder cannot re-embed: that is an error, not a silent skip.
    const again = await pool(noEncoder);
    await ingestLora(hexagon, { name: "hexagon" }, { ...again.deps, embedText });
    await expect(reembedPool({ index: again.index, store: again.store, encoderVersion: "test-enc", embed: noEncoder }))
      .rejects.toThrow(/has no LoRA encoder/);
  });
});
