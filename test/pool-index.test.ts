// The LanceDB LoRA index: idempotent upserts by sha256, filters, cosine ranking with a floor, state changes, and
// the ANN index once the pool is large.
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as lancedb from "@lancedb/lancedb";
import { describe, expect, it } from "vitest";
import type { LoraRecord } from "../src/pool/index.js";
import { LanceLoraIndex } from "../src/pool/lancedb-index.js";

const unit = (values: number[]) => {
  const norm = Math.hypot(...values);
  return values.map((value) => value / norm);
};

function record(n: number, vector: number[], extra: Partial<LoraRecord> = {}): LoraRecord {
  return {
    id: n.toString(16).padStart(64, "0"), name: `lora ${n}`, source: "upload", url: "", family: "proving-ground",
    format: "diffusers", ranks: [4], modules: 12, trigger_words: [], tags: [], captions: [], license: "", nsfw: false,
    state: "active", file: `pool/${n}.safetensors`, bytes: 1000 + n, vector: unit(vector), encoder_version: "enc-1",
    added_at: new Date(Date.UTC(2026, 0, 1, 0, 0, n)).toISOString(), ...extra,
  };
}

async function openIndex(annThreshold?: number) {
  return LanceLoraIndex.open({ uri: await mkdtemp(join(tmpdir(), "autolora-lance-")), annThreshold });
}

describe("LanceDB LoRA index", () => {
  it("rewrites a pool stored before the list columns' JSON copy, keeping every list", async () => {
    const uri = await mkdtemp(join(tmpdir(), "autolora-lance-lists-"));
    const old = record(5, [1, 0, 0], { tags: ["stripes", "bold"], trigger_words: ["strp"], captions: ["red stripes"], ranks: [4, 8] });
    await (await LanceLoraIndex.open({ uri })).upsert([old, record(6, [0, 1, 0])]);
    await (await (await lancedb.connect(uri)).openTable("loras")).dropColumns(["lists"]); // as an older version wrote it
    const index = await LanceLoraIndex.open({ uri });
    const [hit] = await index.search([1, 0, 0], 1);
    expect(hit!.lora).toMatchObject({ tags: ["stripes", "bold"], trigger_words: ["strp"], captions: ["red stripes"], ranks: [4, 8] });
    expect((await index.list({ tags: ["bold"] })).map((lora) => lora.id)).toEqual([old.id]);
    expect(await index.count()).toBe(2);
  });

  it("stores, finds and ranks LoRAs by cosine similarity, with filters and a floor", async () => {
    const index = await openIndex();
    await index.upsert([
      record(1, [1, 0, 0, 0], { tags: ["shape"], name: "hexagon" }),
      record(2, [0.9, 0.1, 0, 0], { family: "flux" }),
      record(3, [0, 1, 0, 0], { nsfw: true, tags: ["style", "o'neil"] }),
      record(4, [-1, 0, 0, 0]),
    ]);
    expect(await index.count()).toBe(4);
    const hits = await index.search(unit([1, 0, 0, 0]), 3);
    expect(hits.map((hit) => hit.lora.name)).toEqual(["hexagon", "lora 2", "lora 3"]);
    expect(hits[0]!.similarity).toBeCloseTo(1, 5);
    expect(hits[1]!.similarity).toBeCloseTo(0.9 / Math.hypot(0.9, 0.1), 5);
    expect(hits[0]!.lora).not.toHaveProperty("vector");
    expect((await index.search(unit([1, 0, 0, 0]), 3, {}, 0.5)).map((h) => h.lora.name)).toEqual(["hexagon", "lora 2"]);
    expect((await index.search(unit([1, 0, 0, 0]), 5, { family: "proving-ground", nsfw: "block" })).map((h) => h.lora.name))
      .toEqual(["hexagon", "lora 4"]);
    expect((await index.list({ tags: ["o'neil", "nothing"] })).map((r) => r.name)).toEqual(["lora 3"]);
    const stored = await index.get(record(3, [1]).id);
    expect(stored?.tags).toEqual(["style", "o'neil"]);
    expect(stored?.vector).toHaveLength(4);
    expect(stored?.bytes).toBe(1003);
  });

  it("is idempotent per sha256, and blocked or removed LoRAs stop being found", async () => {
    const index = await openIndex();
    const first = record(7, [1, 1, 0, 0]);
    await index.upsert([first]);
    await index.upsert([{ ...first, name: "renamed" }]);
    expect(await index.count()).toBe(1);
    expect((await index.get(first.id))?.name).toBe("renamed");
    expect(await index.setState(first.id, "blocked")).toBe(true);
    expect(await index.search(first.vector, 5)).toEqual([]);
    expect((await index.search(first.vector, 5, { state: "blocked" }))).toHaveLength(1);
    expect(await index.remove(first.id)).toBe(true);
    expect(await index.remove(first.id)).toBe(false);
    expect(await index.count()).toBe(0);
    expect(await index.setState("not-an-id' OR 1=1 --", "blocked")).toBe(false);
  });

  it("refuses embeddings of another size than the pool's", async () => {
    const index = await openIndex();
    await index.upsert([record(1, [1, 0, 0, 0])]);
    await expect(index.upsert([record(2, [1, 0, 0, 0, 0, 0, 0, 0])])).rejects.toThrow(/holds 4-d LoRA embeddings, got 8-d/);
    await expect(index.upsert([{ ...record(3, [1, 0, 0, 0]), id: "abc" }])).rejects.toThrow(/sha256/);
  });

  it("builds an ANN index once the pool reaches the threshold, and still finds the nearest LoRA", async () => {
    const uri = await mkdtemp(join(tmpdir(), "autolora-lance-"));
    const index = await LanceLoraIndex.open({ uri, annThreshold: 300 });
    let seed = 1;
    const random = () => ((seed = (seed * 16807) % 2147483647) / 2147483647) * 2 - 1;
    const records = Array.from({ length: 320 }, (_, n) => record(n + 1, Array.from({ length: 16 }, random)));
    await index.upsert(records.slice(0, 200));
    expect(index.hasAnnIndex).toBe(false);
    await index.upsert(records.slice(200));
    expect(index.hasAnnIndex).toBe(true);
    const target = records[123]!;
    const [best] = await index.search(target.vector, 1);
    expect(best?.lora.id).toBe(target.id);
    expect((await LanceLoraIndex.open({ uri })).hasAnnIndex).toBe(true); // built once, found again on reopen
    expect(await index.annStats()).toEqual({ indexed: 320, unindexed: 0, segments: 1 });
    // Later rows are folded into the index once they are a tenth of the table, so search stays indexed.
    const more = Array.from({ length: 60 }, (_, n) => record(1000 + n, Array.from({ length: 16 }, random)));
    await index.append(more.slice(0, 20));
    expect(await index.annStats()).toEqual({ indexed: 320, unindexed: 20, segments: 1 });
    await index.append(more.slice(20));
    expect(await index.annStats()).toMatchObject({ indexed: 380, unindexed: 0 });
    expect((await index.search(more[42]!.vector, 1))[0]?.lora.id).toBe(more[42]!.id);
    // A fold may add a segment, searched on its own (on large pools: 12 on the benchmark's 1M LoRAs); maintenance
    // leaves one.
    await index.maintain();
    expect(await index.annStats()).toEqual({ indexed: 380, unindexed: 0, segments: 1 });
    expect((await index.search(more[42]!.vector, 1))[0]?.lora.id).toBe(more[42]!.id);
  }, 60_000);
});
