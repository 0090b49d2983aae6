// Retrieval: embed the prompt with the frozen text encoder, then choose LoRAs by their embeddings.
// - The score. By default (the paper's eq. 4-5) a LoRA's score is the cosine between the prompt and its weight
//   embedding. With `hybrid`, a LoRA that has text (lora-text.ts) is compared through the normalised mix
//   (1 − textWeight)·weights + textWeight·text of its two embeddings, and its users' rating prior
//   (rating-prior.ts), times ratingWeight, is added. Each hit says its parts: weights, text, rating.
// - "top-k" takes the k best scores, passing the filters and the floor.
// - "covering" (covering.ts) picks at most k that together cover the prompt: the best match first, then LoRAs that
//   match a word of the prompt no pick covers yet. Its candidates are the prompt's nearest LoRAs and each content
//   word's nearest (by weights, and by text with hybrid), so a style named once in a long prompt is still found in a
//   large pool.
import type { Config } from "../config/schema.js";
import type { EmbeddingColumn, LoraFilters, LoraIndex, SearchHit } from "../pool/index.js";
import type { TextEmbedder } from "../pool/lora-text.js";
import {
  cosine, promptWords, selectCovering, type Candidate, type CoveringHit, type CoveringOptions, type PromptPart,
} from "./covering.js";
import { ratingPrior, type RatingSource, type Votes } from "./rating-prior.js";

export type { TextEmbedder } from "../pool/lora-text.js";

export type Selection = "top-k" | "covering";

export interface HybridOptions {
  /** Share of the text embedding in the mix for LoRAs that have text, in [0, 1] (0: weights only, the paper's). */
  textWeight: number;
  /** What the rating prior (in (-1, 1)) adds to the score; 0 leaves ratings out. */
  ratingWeight: number;
  /** Neutral votes the prior is shrunk by: (up − down) / (up + down + ratingPseudoCount). */
  ratingPseudoCount: number;
}

export interface RetrievalOptions {
  k: number;
  /** Similarity below which a LoRA is not used; with covering, the floor of the first pick (later ones must match a
   *  word of the prompt instead). Ratings never lift a LoRA over it. */
  minSimilarity: number;
  filters?: LoraFilters;
  /** Default "top-k". */
  selection?: Selection;
  covering?: CoveringOptions;
  /** Default: weights only, no ratings. */
  hybrid?: HybridOptions;
}

/** How LoRAs are chosen: what the config's retrieval section sets beside k and the floor. */
export type SelectionSettings = Pick<RetrievalOptions, "selection" | "covering" | "hybrid">;

/** Why a LoRA scored what it did: its cosines with the prompt by weights (absent: no LoRA encoder embedded it) and
 *  by text (absent: it has no text), and what its rating prior added. score = similarity (the mix's cosine) +
 *  rating. */
export interface ScoreParts {
  weights?: number;
  text?: number;
  rating: number;
  score: number;
}

export type RetrievedHit = SearchHit & Partial<Pick<CoveringHit, "covers" | "gain">> & { parts?: ScoreParts };

export interface Retrieval {
  hits: RetrievedHit[];
  timings: { encode_ms: number; search_ms: number };
}

export interface CoveringPool {
  query: ArrayLike<number>;
  parts: PromptPart[];
  /** Best first by score; each candidate's vector is the embedding it is compared through. */
  candidates: Array<Candidate & { parts?: ScoreParts }>;
  encodeMs: number;
}

/** Covering's picks from its candidates (`selectCovering`'s; none if no candidate reaches the floor). */
export function coverPrompt(pool: CoveringPool, options: Pick<RetrievalOptions, "k" | "minSimilarity" | "covering">): RetrievedHit[] {
  return selectCovering(pool.query, pool.candidates, pool.parts, options.k, options.covering ?? DEFAULT_COVERING,
    options.minSimilarity);
}

/** The config's retrieval section as RetrievalOptions' selection, covering and hybrid settings. */
export function selectionSettings(retrieval: Config["retrieval"]): SelectionSettings {
  const { hybrid } = retrieval;
  return {
    selection: retrieval.selection,
    covering: { maxOverlap: retrieval.covering.max_overlap, minPartSimilarity: retrieval.covering.min_part_similarity },
    hybrid: { textWeight: hybrid.text_weight, ratingWeight: hybrid.rating_weight, ratingPseudoCount: hybrid.rating_pseudo_count },
  };
}

export const DEFAULT_COVERING: CoveringOptions = { maxOverlap: 0.8, minPartSimilarity: 0.3 };
const WEIGHTS_ONLY: HybridOptions = { textWeight: 0, ratingWeight: 0, ratingPseudoCount: 0 };
// Candidates fetched: the prompt's nearest (CANDIDATES_PER_PICK per pick) and, for covering, each word's nearest.
const CANDIDATES_PER_PICK = 4;
const CANDIDATES_PER_WORD = 4;

type Found = SearchHit & { vector?: number[]; text_vector?: number[] };

/** A found LoRA scored against the query: the embedding it is compared through and its score parts. */
export function scoreHit(query: ArrayLike<number>, hit: Found, hybrid: HybridOptions, votes: Votes | undefined): Candidate & { parts: ScoreParts } {
  const rating = hybrid.ratingWeight * ratingPrior(votes, hybrid.ratingPseudoCount);
  if (hit.lora.encoder_version === "") {
    // No LoRA encoder embedded it (none for its family yet): its text embedding is all there is to compare.
    const text = cosine(query, hit.vector!);
    return { lora: hit.lora, similarity: text, vector: hit.vector!, bonus: rating, parts: { text, rating, score: text + rating } };
  }
  const weights = cosine(query, hit.vector!);
  const text = hit.text_vector ? cosine(query, hit.text_vector) : undefined;
  const vector = hit.text_vector && hybrid.textWeight > 0 ? mix(hit.vector!, hit.text_vector, hybrid.textWeight) : hit.vector!;
  const similarity = vector === hit.vector ? weights : cosine(query, vector);
  return {
    lora: hit.lora, similarity, vector, ...(vector === hit.vector ? {} : { drawn: hit.vector! }),
    bonus: rating, parts: { weights, ...(text !== undefined ? { text } : {}), rating, score: similarity + rating },
  };
}

export class Retriever {
  constructor(private readonly encoder: TextEmbedder, private readonly index: LoraIndex,
    private readonly ratings?: RatingSource) {}

  async retrieve(prompt: string, options: RetrievalOptions): Promise<Retrieval> {
    const started = performance.now();
    if (options.selection === "covering" && options.k > 0) return this.cover(prompt, options, started);
    const [vector] = await this.encoder.embed([prompt]);
    const encoded = performance.now();
    const hybrid = active(options.hybrid);
    let hits: RetrievedHit[] = [];
    if (options.k > 0 && !hybrid) {
      hits = await this.index.search(Array.from(vector!), options.k, options.filters, options.minSimilarity);
    } else if (hybrid && options.k > 0) {
      const candidates = await this.candidates(vector!, [], options.k, options.filters, hybrid);
      hits = candidates.filter((candidate) => candidate.similarity >= options.minSimilarity).slice(0, options.k).map(asHit);
    }
    return { hits, timings: { encode_ms: encoded - started, search_ms: performance.now() - encoded } };
  }

  private async cover(prompt: string, options: RetrievalOptions, started: number): Promise<Retrieval> {
    const pool = await this.coveringCandidates(prompt, options.k, options.filters, options.hybrid);
    const hits = coverPrompt(pool, options);
    return { hits, timings: { encode_ms: pool.encodeMs, search_ms: performance.now() - started - pool.encodeMs } };
  }

  /** What covering chooses from: the prompt's and its words' embeddings, and the LoRAs nearest to the prompt
   *  (CANDIDATES_PER_PICK per pick) or to any of its words, each scored against the whole prompt. */
  async coveringCandidates(prompt: string, k: number, filters?: LoraFilters, hybrid?: HybridOptions): Promise<CoveringPool> {
    const started = performance.now();
    const words = promptWords(prompt);
    const [query, ...wordVectors] = await this.encoder.embed([prompt, ...words]);
    const encodeMs = performance.now() - started;
    const candidates = await this.candidates(query!, wordVectors, k, filters, active(hybrid) ?? WEIGHTS_ONLY);
    return { query: query!, parts: words.map((text, n) => ({ text, vector: wordVectors[n]! })), candidates, encodeMs };
  }

  /** The LoRAs nearest to the query (CANDIDATES_PER_PICK per pick) and to each word, by weights and, when text
   *  counts, by text; scored against the query, best first. */
  private async candidates(query: ArrayLike<number>, wordVectors: ArrayLike<number>[], k: number,
    filters: LoraFilters | undefined, hybrid: HybridOptions): Promise<Array<Candidate & { parts: ScoreParts }>> {
    const columns: EmbeddingColumn[] = hybrid.textWeight > 0 ? ["vector", "text_vector"] : ["vector"];
    const searches = await Promise.all([
      ...columns.map((column) => this.index.search(Array.from(query), CANDIDATES_PER_PICK * k, filters, -1, true, column)),
      ...wordVectors.flatMap((vector) => columns.map((column) =>
        this.index.search(Array.from(vector), CANDIDATES_PER_WORD, filters, -1, true, column))),
      hybrid.ratingWeight > 0 && this.ratings ? this.ratings.votes() : Promise.resolve(new Map<string, Votes>()),
    ]);
    const votes = searches.pop() as Map<string, Votes>;
    const found = new Map<string, Found>();
    for (const hits of searches as Found[][]) for (const hit of hits) if (hit.vector && !found.has(hit.lora.id)) found.set(hit.lora.id, hit);
    return [...found.values()].map((hit) => scoreHit(query, hit, hybrid, votes.get(hit.lora.id)))
      .sort((a, b) => b.parts.score - a.parts.score);
  }

  /** The given LoRAs (ids), in that order, each scored against the prompt: for LoRAs a user chose. */
  async score(prompt: string, ids: string[], hybrid?: HybridOptions): Promise<Retrieval> {
    const started = performance.now();
    const [vector] = await this.encoder.embed([prompt]);
    const encoded = performance.now();
    const settings = active(hybrid) ?? WEIGHTS_ONLY;
    const votes = settings.ratingWeight > 0 && this.ratings ? await this.ratings.votes() : new Map<string, Votes>();
    const hits: RetrievedHit[] = [];
    for (const id of ids) {
      const record = await this.index.get(id);
      if (!record) throw new Error(`the LoRA ${id.slice(0, 12)} is no longer in the pool`);
      const { vector: loraVector, text_vector: textVector, ...lora } = record;
      hits.push(asHit(scoreHit(vector!, { lora, similarity: 0, vector: loraVector, text_vector: textVector }, settings, votes.get(id))));
    }
    return { hits, timings: { encode_ms: encoded - started, search_ms: performance.now() - encoded } };
  }
}

/** A scored candidate as a hit: without the embeddings it was compared through. */
function asHit({ vector: _vector, bonus: _bonus, drawn: _drawn, ...hit }: Candidate & { parts: ScoreParts }): RetrievedHit {
  return hit;
}

/** The hybrid settings if they change anything; undefined for weights only. */
function active(hybrid: HybridOptions | undefined): HybridOptions | undefined {
  return hybrid && (hybrid.textWeight > 0 || hybrid.ratingWeight > 0) ? hybrid : undefined;
}

function mix(weights: ArrayLike<number>, text: ArrayLike<number>, textWeight: number): number[] {
  const out = Array.from(weights, (value, d) => (1 - textWeight) * value + textWeight * text[d]!);
  const norm = Math.hypot(...out);
  return norm > 1e-9 ? out.map((value) => value / norm) : Array.from(weights);
}

/** "weights 0.41 · text 0.63 · rating −0.02": a hit's score parts for people. */
export function describeParts(parts: ScoreParts): string {
  const signed = (value: number) => `${value < 0 ? "−" : "+"}${Math.abs(value).toFixed(2)}`;
  return [parts.weights !== undefined ? `weights ${parts.weights.toFixed(2)}` : "no weights embedding",
    ...(parts.text !== undefined ? [`text ${parts.text.toFixed(2)}`] : ["no text"]),
    ...(parts.rating !== 0 ? [`rating ${signed(parts.rating)}`] : [])].join(" · ");
}
