// Covering selection on constructed embeddings: each axis of a small space is one concept ("hexagon", "stripes",
// "star", "red", …), so what a prompt asks and what each LoRA draws are known exactly.
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { promptWords, selectCovering, type Candidate, type PromptPart } from "../src/pipeline/covering.js";
import { Retriever, type TextEmbedder } from "../src/pipeline/retrieval.js";
import type { LoraRecord } from "../src/pool/index.js";
import { LanceLoraIndex } from "../src/pool/lancedb-index.js";

const AXES = ["hexagon", "stripes", "star", "red", "template", "neon", "dots"] as const;
type Axis = (typeof AXES)[number];

/** A unit vector with these weights on the named axes. */
function vec(weights: Partial<Record<Axis, number>>): number[] {
  const out = AXES.map((axis) => weights[axis] ?? 0);
  const norm = Math.hypot(...out);
  return out.map((value) => value / norm);
}

function record(name: string, vector: number[], n: number): LoraRecord {
  return {
    id: n.toString(16).padStart(64, "0"), name, source: "test", url: "", family: "proving-ground", format: "diffusers",
    ranks: [4], modules: 1, trigger_words: [], tags: [], captions: [], license: "", nsfw: false, state: "active",
    file: `${n}.safetensors`, bytes: 1, vector, encoder_version: "t", added_at: new Date(0).toISOString(),
  };
}

function candidates(loras: Record<string, number[]>, query: number[]): Candidate[] {
  return Object.entries(loras).map(([name, vector], n) => {
    const { vector: _, ...lora } = record(name, vector, n + 1);
    const similarity = vector.reduce((sum, value, d) => sum + value * query[d]!, 0);
    return { lora, similarity, vector };
  }).sort((a, b) => b.similarity - a.similarity);
}

const WORDS: Record<string, number[]> = {
  red: vec({ red: 1 }), hexagon: vec({ hexagon: 1 }), stripes: vec({ stripes: 1 }), star: vec({ star: 1 }),
  neon: vec({ neon: 1 }), dots: vec({ dots: 1 }), tile: vec({ hexagon: 0.9, dots: 0.45 }),
};
const parts = (...words: string[]): PromptPart[] => words.map((text) => ({ text, vector: WORDS[text]! }));
const OPTIONS = { maxOverlap: 0.8, minPartSimilarity: 0.3 };

// Three hexagon LoRAs (close to each other, not identical), one stripes LoRA, one star LoRA.
const POOL = {
  "hexagon-a": vec({ hexagon: 1, red: 0.25 }), "hexagon-b": vec({ hexagon: 1, template: 0.3 }),
  "hexagon-c": vec({ hexagon: 1, red: 0.1, template: 0.1 }), stripes: vec({ stripes: 1, template: 0.2 }),
  star: vec({ star: 1, template: 0.2 }),
};

describe("covering selection", () => {
  it("gives a prompt that names an object and a style one LoRA of each, where top-k gives three of the object", () => {
    const query = vec({ hexagon: 1, stripes: 0.55, red: 0.4, template: 0.3 }); // "a red hexagon with stripes"
    const ranked = candidates(POOL, query);
    expect(ranked.slice(0, 3).map((hit) => hit.lora.name).sort()).toEqual(["hexagon-a", "hexagon-b", "hexagon-c"]);
    const picks = selectCovering(query, ranked, parts("red", "hexagon", "stripes"), 3, OPTIONS);
    expect(picks.map((hit) => hit.lora.name)).toEqual(["hexagon-a", "stripes"]);
    expect(picks.map((hit) => hit.covers?.part)).toEqual(["hexagon", "stripes"]);
    expect(picks[1]!.covers!.similarity).toBeCloseTo(0.98, 2);
    expect(picks[0]!.gain).toBeCloseTo(picks[0]!.similarity, 6); // the first pick's gain is its similarity
  });

  it("keeps a one-concept prompt to one LoRA: no unrelated second, however high k is", () => {
    const query = vec({ hexagon: 1, template: 0.4 }); // "a hexagon, please"
    const picks = selectCovering(query, candidates(POOL, query), parts("hexagon"), 5, OPTIONS);
    expect(picks.map((hit) => hit.lora.name)).toEqual(["hexagon-b"]);
  });

  it("skips a near-duplicate of a pick even when it matches another word of the prompt", () => {
    // "a hexagon tile": "tile" is close to hexagon; a second hexagon LoRA matches it best, but duplicates the first.
    const pool = { hexagon: vec({ hexagon: 1 }), "hexagon-tile": vec({ hexagon: 1, dots: 0.3 }) };
    const query = vec({ hexagon: 1, dots: 0.2 });
    const picks = selectCovering(query, candidates(pool, query), parts("hexagon", "tile"), 3, OPTIONS);
    expect(picks).toHaveLength(1);
    expect(selectCovering(query, candidates(pool, query), parts("hexagon", "tile"), 3, { ...OPTIONS, maxOverlap: 0.99 }))
      .toHaveLength(2);
  });

  it("adds no LoRA that matches its closest prompt word too weakly", () => {
    // The star LoRA's closest word is "red" at 0.0 cosine: below the floor, so "a red hexagon" keeps one pick.
    const query = vec({ hexagon: 1, red: 0.5 });
    const picks = selectCovering(query, candidates({ hexagon: vec({ hexagon: 1 }), star: POOL.star }, query),
      parts("red", "hexagon"), 3, OPTIONS);
    expect(picks.map((hit) => hit.lora.name)).toEqual(["hexagon"]);
  });

  it("stops at k even when more of the prompt is uncovered", () => {
    const query = vec({ hexagon: 1, stripes: 0.8, neon: 0.7 });
    const picks = selectCovering(query, candidates(POOL, query).concat(candidates({ neon: vec({ neon: 1 }) }, query)),
      parts("hexagon", "stripes", "neon"), 2, OPTIONS);
    expect(picks).toHaveLength(2);
    expect(selectCovering(query, candidates({ ...POOL, neon: vec({ neon: 1 }) }, query), parts("hexagon", "stripes", "neon"), 3, OPTIONS)
      .map((hit) => hit.covers?.part).sort()).toEqual(["hexagon", "neon", "stripes"]);
  });

  it("reads a prompt's content words, leaving out articles and request phrasing", () => {
    expect(promptWords("Can you draw me a red hexagon with stripes, please?")).toEqual(["red", "hexagon", "stripes"]);
    expect(promptWords("an 8-bit plus sign; 8-bit style")).toEqual(["8-bit", "plus", "sign"]);
    expect(promptWords("a picture of the")).toEqual([]);
  });
});

describe("covering retrieval through the pool index", () => {
  // A fake text encoder: each known word is its axis, a sentence the normalised sum of its words (plus "template").
  const embedder: TextEmbedder = {
    async embed(texts) {
      return texts.map((text) => {
        const words = promptWords(text).filter((word) => word in WORDS);
        const sum = AXES.map((_, d) => words.reduce((total, word) => total + WORDS[word]![d]!, 0) + (AXES[d] === "template" ? 0.3 : 0));
        const norm = Math.hypot(...sum);
        return sum.map((value) => value / norm);
      });
    },
  };

  it("finds the style LoRA even when many LoRAs of the object rank above it for the whole prompt", async () => {
    const index = await LanceLoraIndex.open({ uri: await mkdtemp(join(tmpdir(), "autolora-covering-")) });
    // 30 hexagon LoRAs, each a little different, then one stripes LoRA: top-12 for the prompt is all hexagons.
    const hexagons = Array.from({ length: 30 }, (_, n) => record(`hexagon-${n}`, vec({ hexagon: 1, red: 0.02 * n, template: 0.3 }), n + 1));
    await index.upsert([...hexagons, record("stripes", vec({ stripes: 1 }), 100), record("neon", vec({ neon: 1 }), 101)]);
    const retriever = new Retriever(embedder, index);
    const prompt = "a red hexagon with stripes";
    const topK = await retriever.retrieve(prompt, { k: 3, minSimilarity: -1 });
    expect(topK.hits.every((hit) => hit.lora.name.startsWith("hexagon-"))).toBe(true);
    const covering = await retriever.retrieve(prompt, { k: 3, minSimilarity: 0.2, selection: "covering" });
    expect(covering.hits.map((hit) => hit.covers?.part)).toEqual(["hexagon", "stripes"]);
    expect(covering.hits[1]!.lora.name).toBe("stripes");
    expect(covering.hits[1]!.similarity).toBeCloseTo(1 / Math.hypot(1, 1, 1, 0.3), 5); // to the whole prompt, as top-k reports it
    // The floor still holds for the first pick: a prompt nothing in the pool resembles gets no LoRA at all.
    expect((await retriever.retrieve("dots", { k: 3, minSimilarity: 0.5, selection: "covering" })).hits).toEqual([]);
  });
});
