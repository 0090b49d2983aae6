// Hybrid scoring: a LoRA's text embedding beside its weight embedding, and users' ratings as a prior; the index's
// text column (with the migration of a pool indexed before it existed) and the text backfill.
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as lancedb from "@lancedb/lancedb";
import { Bool, Field, FixedSizeList, Float32, Int32, Int64, List, Schema, Utf8 } from "apache-arrow";
import { describe, expect, it } from "vitest";
import { CachedVotes, ratingPrior, type RatingSource, type Votes } from "../src/pipeline/rating-prior.js";
import { describeParts, Retriever, type HybridOptions, type TextEmbedder } from "../src/pipeline/retrieval.js";
import type { LoraRecord } from "../src/pool/index.js";
import { LanceLoraIndex } from "../src/pool/lancedb-index.js";
import { embedLoraText, loraTextPieces, trainingTags } from "../src/pool/lora-text.js";
import { LoraStore } from "../src/pool/store.js";
import { backfillLoraText } from "../src/pool/text-backfill.js";

const AXES = ["hexagon", "stripes", "star", "neon", "other"] as const;
type Axis = (typeof AXES)[number];

function vec(weights: Partial<Record<Axis, number>>): number[] {
  const out = AXES.map((axis) => weights[axis] ?? 0);
  const norm = Math.hypot(...out);
  return out.map((value) => value / norm);
}

function record(n: number, name: string, vector: number[], extra: Partial<LoraRecord> = {}): LoraRecord {
  return {
    id: n.toString(16).padStart(64, "0"), name, source: "test", url: "", family: "proving-ground", format: "diffusers",
    ranks: [4], modules: 1, trigger_words: [], tags: [], captions: [], license: "", nsfw: false, state: "active",
    file: `${n}.safetensors`, bytes: 1, vector, encoder_version: "t", added_at: new Date(0).toISOString(), ...extra,
  };
}

// A fake text encoder: each concept word is its axis; other words add to "other".
const embedder: TextEmbedder = {
  async embed(texts) {
    return texts.map((text) => {
      const words = text.toLowerCase().match(/[a-z]+/g) ?? [];
      const weights: Partial<Record<Axis, number>> = { other: 0.05 };
      for (const word of words) {
        const axis = (AXES as readonly string[]).includes(word) ? word as Axis : "other";
        weights[axis] = (weights[axis] ?? 0) + (axis === "other" ? 0.1 : 1);
      }
      return vec(weights);
    });
  },
};

const HYBRID: HybridOptions = { textWeight: 0.5, ratingWeight: 0.1, ratingPseudoCount: 5 };

async function openIndex() {
  return LanceLoraIndex.open({ uri: await mkdtemp(join(tmpdir(), "autolora-hybrid-")) });
}

function votesOf(entries: Record<string, Votes>): RatingSource {
  return { votes: async () => new Map(Object.entries(entries)) };
}

describe("a LoRA's text", () => {
  it("is its source's name, trigger words, tags and captions, and its file's most frequent training tags", () => {
    const metadata = { ss_tag_frequency: JSON.stringify({ "10_set": { "neon": 12, "glow": 3, " ": 9 }, "5_more": { "glow": 10, "dark": 1 } }) };
    expect(trainingTags(metadata)).toEqual(["glow", "neon", "dark"]);
    expect(loraTextPieces({ name: "Neon signs", trigger_words: ["nnsign"], tags: ["style", "neon"], captions: ["a neon sign", "a neon sign", " "] }, metadata))
      .toEqual(["Neon signs", "nnsign", "style, neon", "a neon sign", "glow, neon, dark"]);
    // Malformed training metadata is ignored; a LoRA with nothing written about it has no text.
    expect(trainingTags({ ss_tag_frequency: "{not json" })).toEqual([]);
    expect(trainingTags({ ss_tag_frequency: JSON.stringify({ set: { tag: "many" } }) })).toEqual([]);
    expect(loraTextPieces({ trigger_words: [], tags: [], captions: [] }, {})).toEqual([]);
  });

  it("embeds as the unit mean of its pieces, and as nothing without pieces", async () => {
    const text = await embedLoraText(embedder, ["hexagon", "stripes"]);
    expect(Math.hypot(...text!)).toBeCloseTo(1, 6);
    expect(text![0]).toBeCloseTo(text![1]!, 6);
    expect(await embedLoraText(embedder, [])).toBeUndefined();
  });
});

describe("the index's text embeddings", () => {
  it("stores them beside the weights, and a text search leaves out LoRAs without text", async () => {
    const index = await openIndex();
    await index.upsert([
      record(1, "described", vec({ other: 1 }), { text_vector: vec({ stripes: 1 }) }),
      record(2, "undescribed", vec({ stripes: 1 })),
    ]);
    expect((await index.get(record(1, "", []).id))!.text_vector).toEqual(vec({ stripes: 1 }).map((v) => Math.fround(v)));
    expect((await index.get(record(2, "", []).id))!.text_vector).toBeUndefined();
    const byText = await index.search(vec({ stripes: 1 }), 5, {}, -1, true, "text_vector");
    expect(byText.map((hit) => hit.lora.name)).toEqual(["described"]);
    expect(byText[0]!.similarity).toBeCloseTo(1, 5);
    expect((await index.search(vec({ stripes: 1 }), 5)).map((hit) => hit.lora.name)).toEqual(["undescribed", "described"]);
    await expect(index.upsert([record(3, "bad", vec({ star: 1 }), { text_vector: [1, 0] })])).rejects.toThrow(/text embedding .* 2 dimensions/);
  });

  it("migrates a pool indexed before text embeddings existed, and the backfill embeds its LoRAs' text", async () => {
    const uri = await mkdtemp(join(tmpdir(), "autolora-hybrid-old-"));
    // The index as it was: no text columns.
    const old = record(7, "Star shapes", vec({ star: 1 }), { source: "civitai", trigger_words: ["star"], captions: ["a star"] });
    const db = await lancedb.connect(uri);
    const { text_vector: _t, text_checked: _c, ...row } = old;
    const strings = () => new List(new Field("item", new Utf8(), true));
    const oldSchema = new Schema([
      ...["id", "name", "source", "url", "family", "format"].map((name) => new Field(name, new Utf8(), false)),
      new Field("ranks", new List(new Field("item", new Int32(), true)), false), new Field("modules", new Int32(), false),
      ...["trigger_words", "tags", "captions"].map((name) => new Field(name, strings(), false)),
      new Field("license", new Utf8(), false), new Field("nsfw", new Bool(), false), new Field("state", new Utf8(), false),
      new Field("file", new Utf8(), false), new Field("bytes", new Int64(), false),
      new Field("vector", new FixedSizeList(AXES.length, new Field("item", new Float32(), true)), false),
      new Field("encoder_version", new Utf8(), false), new Field("added_at", new Utf8(), false),
    ]);
    await db.createTable("loras", [{ ...row, bytes: BigInt(row.bytes) }], { schema: oldSchema });
    const index = await LanceLoraIndex.open({ uri });
    const migrated = await index.get(old.id);
    expect(migrated).toMatchObject({ name: "Star shapes", trigger_words: ["star"], text_checked: false });
    expect(migrated!.text_vector).toBeUndefined();
    expect((await index.search(vec({ star: 1 }), 1))[0]!.lora.name).toBe("Star shapes");
    expect((await index.textUnchecked()).map((lora) => lora.id)).toEqual([old.id]);

    const store = new LoraStore(await mkdtemp(join(tmpdir(), "autolora-hybrid-store-"))); // its file is gone: text still counts
    const lines: string[] = [];
    expect(await backfillLoraText({ index, store }, embedder, (line) => lines.push(line))).toEqual({ checked: 1, withText: 1 });
    expect((await index.get(old.id))!.text_vector![2]).toBeGreaterThan(0.9);
    expect(await index.textUnchecked()).toEqual([]);
    expect(lines.join("\n")).toMatch(/1 LoRAs checked, 1 with text/);
    // Reopening finds the new schema: nothing to migrate, nothing to backfill.
    expect(await (await LanceLoraIndex.open({ uri })).textUnchecked()).toEqual([]);
  });
});

describe("hybrid retrieval", () => {
  it("finds a LoRA its text describes though its weights are unclear, and scores a LoRA without text by its weights", async () => {
    const index = await openIndex();
    await index.upsert([
      // Weights that lean a little toward stripes; a card that says stripes.
      record(1, "documented", vec({ stripes: 0.5, other: 1 }), { text_vector: vec({ stripes: 1 }) }),
      // Weights that lean a little more toward stripes; nothing written.
      record(2, "undocumented", vec({ stripes: 0.6, other: 1 })),
      record(3, "hexagon", vec({ hexagon: 1 }), { text_vector: vec({ hexagon: 1 }) }),
    ]);
    const retriever = new Retriever(embedder, index);
    const weightsOnly = await retriever.retrieve("stripes", { k: 2, minSimilarity: -1 });
    expect(weightsOnly.hits.map((hit) => hit.lora.name)).toEqual(["undocumented", "documented"]);
    expect(weightsOnly.hits[0]!.parts).toBeUndefined();
    const hybrid = await retriever.retrieve("stripes", { k: 2, minSimilarity: -1, hybrid: { ...HYBRID, ratingWeight: 0 } });
    expect(hybrid.hits.map((hit) => hit.lora.name)).toEqual(["documented", "undocumented"]);
    const [documented, undocumented] = hybrid.hits;
    expect(documented!.parts!.text).toBeGreaterThan(0.95);
    expect(documented!.parts!.weights).toBeLessThan(0.5);
    expect(undocumented!.parts!.text).toBeUndefined();
    expect(undocumented!.similarity).toBeCloseTo(undocumented!.parts!.weights!, 6);
    expect(describeParts(undocumented!.parts!)).toMatch(/^weights 0\.\d\d · no text$/);
    // The same through covering: its candidates come from the text column too.
    const covering = await retriever.retrieve("stripes", { k: 2, minSimilarity: 0.2, selection: "covering", hybrid: { ...HYBRID, ratingWeight: 0 } });
    expect(covering.hits[0]!.lora.name).toBe("documented");
    expect(covering.hits[0]!.parts!.text).toBeGreaterThan(0.95);
  });

  it("finds a LoRA that no LoRA encoder embedded by its text, weights or not, and says it has no weights embedding", async () => {
    const index = await openIndex();
    await index.upsert([
      // A family with no encoder yet: its text embedding is what it is searched by.
      record(1, "neon, text only", vec({ neon: 1 }), { encoder_version: "", text_vector: vec({ neon: 1 }) }),
      record(2, "hexagon", vec({ hexagon: 1 }), { text_vector: vec({ hexagon: 1 }) }),
    ]);
    const retriever = new Retriever(embedder, index);
    for (const options of [{}, { hybrid: { ...HYBRID, ratingWeight: 0 } }, { selection: "covering" as const }]) {
      const found = await retriever.retrieve("neon hexagon", { k: 2, minSimilarity: 0.2, ...options });
      expect(found.hits.map((hit) => hit.lora.name).sort()).toEqual(["hexagon", "neon, text only"]);
    }
    const [textOnly] = (await retriever.retrieve("neon", { k: 1, minSimilarity: 0.2, hybrid: { ...HYBRID, ratingWeight: 0 } })).hits;
    expect(textOnly!.parts!.weights).toBeUndefined();
    expect(textOnly!.parts!.text).toBeGreaterThan(0.95);
    expect(describeParts(textOnly!.parts!)).toMatch(/^no weights embedding · text (0\.9\d|1\.00)$/);
  });

  it("drops a LoRA that several users rated down below an equal one, while one vote moves it little", async () => {
    const index = await openIndex();
    const same = vec({ star: 1, other: 0.3 });
    await index.upsert([record(1, "liked", same), record(2, "disliked", same), record(3, "close second", vec({ star: 1, other: 0.5 }))]);
    const ids = { liked: record(1, "", []).id, disliked: record(2, "", []).id };
    const ask = (votes: Record<string, Votes>) => new Retriever(embedder, index, votesOf(votes))
      .retrieve("a star", { k: 3, minSimilarity: -1, hybrid: HYBRID });

    const unrated = await ask({});
    expect(unrated.hits.slice(0, 2).map((hit) => hit.parts!.rating)).toEqual([0, 0]);

    const rated = await ask({ [ids.disliked]: { up: 0, down: 4 }, [ids.liked]: { up: 1, down: 0 } });
    const names = rated.hits.map((hit) => hit.lora.name);
    expect(names.indexOf("disliked")).toBeGreaterThan(names.indexOf("liked"));
    expect(names.indexOf("disliked")).toBeGreaterThan(names.indexOf("close second"));
    const disliked = rated.hits.find((hit) => hit.lora.name === "disliked")!;
    expect(disliked.parts!.rating).toBeCloseTo(-0.1 * 4 / 9, 6);
    expect(describeParts(disliked.parts!)).toContain("rating −0.04");
    // One down vote does not sink a LoRA below one that matches the prompt clearly worse.
    const lone = await ask({ [ids.disliked]: { up: 0, down: 1 } });
    const order = lone.hits.map((hit) => hit.lora.name);
    expect(order.indexOf("disliked")).toBeLessThan(order.indexOf("close second"));
    // Ratings never lift a LoRA over the floor.
    const floor = unrated.hits[0]!.similarity + 0.001;
    expect((await new Retriever(embedder, index, votesOf({ [ids.liked]: { up: 50, down: 0 } }))
      .retrieve("a star", { k: 3, minSimilarity: floor, hybrid: HYBRID })).hits).toEqual([]);
  });
});

describe("the rating prior", () => {
  it("is neutral without votes and shrinks a few votes toward it", () => {
    expect(ratingPrior(undefined, 5)).toBe(0);
    expect(ratingPrior({ up: 0, down: 0 }, 5)).toBe(0);
    expect(ratingPrior({ up: 0, down: 1 }, 5)).toBeCloseTo(-1 / 6, 9);
    expect(ratingPrior({ up: 0, down: 100 }, 5)).toBeLessThan(-0.95);
    expect(ratingPrior({ up: 3, down: 3 }, 5)).toBe(0);
  });

  it("is counted once per interval, and a failed count is retried on the next prompt", async () => {
    let now = 0;
    let counts = 0;
    let fail = false;
    const votes = new CachedVotes(async () => {
      counts += 1;
      if (fail) throw new Error("store closed");
      return [{ lora: "a", up: counts, down: 0 }];
    }, 1000, () => now);
    expect((await votes.votes()).get("a")).toEqual({ up: 1, down: 0 });
    now = 500;
    expect((await votes.votes()).get("a")).toEqual({ up: 1, down: 0 });
    expect(counts).toBe(1);
    now = 1501;
    fail = true;
    expect((await votes.votes()).size).toBe(0);
    fail = false;
    expect((await votes.votes()).get("a")).toEqual({ up: 3, down: 0 });
  });
});
