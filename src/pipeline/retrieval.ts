// Retrieval: embed the prompt with the frozen text encoder, then choose LoRAs by their weight embeddings.
// - "top-k" is the paper's eq. 4-5: the k LoRAs most similar by cosine, passing the filters and the floor.
// - "covering" (covering.ts) picks at most k that together cover the prompt: the best match first, then LoRAs that
//   match a word of the prompt no pick covers yet. Its candidates are the prompt's nearest LoRAs and each content
//   word's nearest, so a style named once in a long prompt is still found in a large pool.
import type { Config } from "../config/schema.js";
import type { LoraFilters, LoraIndex, SearchHit } from "../pool/index.js";
import {
  cosine, promptWords, selectCovering, type Candidate, type CoveringHit, type CoveringOptions, type PromptPart,
} from "./covering.js";

export type Selection = "top-k" | "covering";

export interface RetrievalOptions {
  k: number;
  /** Cosine below which a LoRA is not used; with covering, the floor of the first pick (later ones must match a
   *  word of the prompt instead). */
  minSimilarity: number;
  filters?: LoraFilters;
  /** Default "top-k". */
  selection?: Selection;
  covering?: CoveringOptions;
}

/** How LoRAs are chosen: what the config's retrieval section sets beside k and the floor. */
export type SelectionSettings = Pick<RetrievalOptions, "selection" | "covering">;

export type RetrievedHit = SearchHit & Partial<Pick<CoveringHit, "covers" | "gain">>;

export interface Retrieval {
  hits: RetrievedHit[];
  timings: { encode_ms: number; search_ms: number };
}

/** What the retriever needs of a text encoder: unit embeddings of texts, in order. */
export interface TextEmbedder {
  embed(texts: string[]): Promise<ArrayLike<number>[]>;
}

export interface CoveringPool {
  query: ArrayLike<number>;
  parts: PromptPart[];
  /** Best first by similarity to the whole prompt. */
  candidates: Candidate[];
  encodeMs: number;
}

/** Covering's picks from its candidates: none if even the best is below the floor, else `selectCovering`'s. */
export function coverPrompt(pool: CoveringPool, options: Pick<RetrievalOptions, "k" | "minSimilarity" | "covering">): RetrievedHit[] {
  const best = pool.candidates[0];
  if (!best || best.similarity < options.minSimilarity) return [];
  return selectCovering(pool.query, pool.candidates, pool.parts, options.k, options.covering ?? DEFAULT_COVERING);
}

/** The config's retrieval section as RetrievalOptions' selection and covering. */
export function selectionSettings(retrieval: Config["retrieval"]): SelectionSettings {
  return {
    selection: retrieval.selection,
    covering: { maxOverlap: retrieval.covering.max_overlap, minPartSimilarity: retrieval.covering.min_part_similarity },
  };
}

export const DEFAULT_COVERING: CoveringOptions = { maxOverlap: 0.8, minPartSimilarity: 0.3 };
// Candidates fetched for covering: the prompt's nearest (CANDIDATES_PER_PICK per pick) and each word's nearest.
const CANDIDATES_PER_PICK = 4;
const CANDIDATES_PER_WORD = 4;

export class Retriever {
  constructor(private readonly encoder: TextEmbedder, private readonly index: LoraIndex) {}

  async retrieve(prompt: string, options: RetrievalOptions): Promise<Retrieval> {
    const started = performance.now();
    if (options.selection === "covering" && options.k > 0) return this.cover(prompt, options, started);
    const [vector] = await this.encoder.embed([prompt]);
    const encoded = performance.now();
    const hits = options.k > 0
      ? await this.index.search(Array.from(vector!), options.k, options.filters, options.minSimilarity)
      : [];
    return { hits, timings: { encode_ms: encoded - started, search_ms: performance.now() - encoded } };
  }

  private async cover(prompt: string, options: RetrievalOptions, started: number): Promise<Retrieval> {
    const pool = await this.coveringCandidates(prompt, options.k, options.filters);
    const hits = coverPrompt(pool, options);
    return { hits, timings: { encode_ms: pool.encodeMs, search_ms: performance.now() - started - pool.encodeMs } };
  }

  /** What covering chooses from: the prompt's and its words' embeddings, and the LoRAs nearest to the prompt
   *  (CANDIDATES_PER_PICK per pick) or to any of its words, each with its similarity to the whole prompt. */
  async coveringCandidates(prompt: string, k: number, filters?: LoraFilters): Promise<CoveringPool> {
    const started = performance.now();
    const words = promptWords(prompt);
    const [query, ...wordVectors] = await this.encoder.embed([prompt, ...words]);
    const encodeMs = performance.now() - started;
    const found = new Map<string, Candidate>();
    const add = (hits: Array<SearchHit & { vector?: number[] }>) => {
      for (const hit of hits) if (hit.vector && !found.has(hit.lora.id)) found.set(hit.lora.id, hit as Candidate);
    };
    const searches = await Promise.all([
      this.index.search(Array.from(query!), CANDIDATES_PER_PICK * k, filters, -1, true),
      ...wordVectors.map((vector) => this.index.search(Array.from(vector), CANDIDATES_PER_WORD, filters, -1, true))]);
    for (const hits of searches) add(hits);
    const candidates = [...found.values()].map((candidate) => ({ ...candidate, similarity: cosine(query!, candidate.vector) }))
      .sort((a, b) => b.similarity - a.similarity);
    return { query: query!, parts: words.map((text, n) => ({ text, vector: wordVectors[n]! })), candidates, encodeMs };
  }

  /** The given LoRAs (ids), in that order, each with its similarity to the prompt: for LoRAs a user chose. */
  async score(prompt: string, ids: string[]): Promise<Retrieval> {
    const started = performance.now();
    const [vector] = await this.encoder.embed([prompt]);
    const encoded = performance.now();
    const hits: SearchHit[] = [];
    for (const id of ids) {
      const record = await this.index.get(id);
      if (!record) throw new Error(`the LoRA ${id.slice(0, 12)} is no longer in the pool`);
      const { vector: loraVector, ...lora } = record;
      hits.push({ lora, similarity: cosine(vector!, loraVector) });
    }
    return { hits, timings: { encode_ms: encoded - started, search_ms: performance.now() - encoded } };
  }
}
