// Covering selection: pick up to k LoRAs that together cover what the prompt asks, instead of the k nearest.
//
// The paper's top-k takes the k LoRAs most similar to the prompt, so "a red hexagon with stripes" gets three hexagon
// LoRAs and no stripes. Here the first pick is the best match; every further pick is the candidate that best
// matches what the picks so far leave of the prompt (the prompt embedding's residual after projecting out the
// picks' span), and it is taken only if
// - it is not a near-duplicate of a pick (cosine between the two LoRAs at most `maxOverlap`), and
// - it matches a word of the prompt that no pick covers yet, at least `minPartSimilarity` (each LoRA covers the
//   prompt word whose embedding is closest to it).
// So a one-concept prompt keeps one LoRA unless another names a different word of it, and k is "at most k".
import type { SearchHit } from "../pool/index.js";

export interface CoveringOptions {
  /** Largest cosine between two picked LoRAs: above it the second is a near-duplicate and is skipped. */
  maxOverlap: number;
  /** Least cosine between a further pick and the prompt word it covers. */
  minPartSimilarity: number;
}

/** A word of the prompt and its embedding (same text encoder as the prompt and the LoRAs). */
export interface PromptPart {
  text: string;
  vector: ArrayLike<number>;
}

export interface Candidate extends SearchHit {
  /** The LoRA's embedding (with hybrid scoring, the mix of its weight and text embeddings). */
  vector: ArrayLike<number>;
  /** Added to the candidate's gain at every step: its rating prior's share of the score. */
  bonus?: number;
  /** What the LoRA draws, for which prompt word it covers and whether it duplicates a pick: its weight embedding
   *  (default: `vector`). Text describes a LoRA's preview images, colours and backgrounds included, so a LoRA whose
   *  caption says "red" would otherwise cover the word "red". */
  drawn?: ArrayLike<number>;
}

export interface CoveringHit extends SearchHit {
  /** The prompt word this LoRA is closest to, and that cosine; absent when the prompt has no content words. */
  covers?: { part: string; similarity: number };
  /** How much of the prompt not yet covered this pick matched: the residual's dot product with the LoRA (plus its
   *  rating bonus). */
  gain: number;
}

// Words that carry no concept: articles, prepositions, pronouns and the phrasing of a request.
const FUNCTION_WORDS = new Set((
  "a an the this that these those some any one of in on at to into onto from by with without and or but for as is are " +
  "be it its it's my me i you your we our us he she they them can could would will should please make draw show give " +
  "paint render create generate picture image photo illustration depicting showing like want need style look looking " +
  "something kind sort type very really just also"
).split(" "));

/** The content words of a prompt, lower-case, in order, each once. */
export function promptWords(prompt: string): string[] {
  const words = prompt.toLowerCase().match(/[\p{L}\p{N}]+(?:[-'][\p{L}\p{N}]+)*/gu) ?? [];
  return [...new Set(words.filter((word) => !FUNCTION_WORDS.has(word)))];
}

/** Up to k picks (see the top of this file); the first must have `similarity` ≥ `firstFloor`. */
export function selectCovering<C extends Candidate>(query: ArrayLike<number>, candidates: C[], parts: PromptPart[], k: number,
  options: CoveringOptions, firstFloor = -Infinity): Array<CoveringHit & Omit<C, "vector" | "bonus" | "drawn">> {
  const units = candidates.map((candidate) => unit(candidate.vector));
  const drawn = candidates.map((candidate, i) => (candidate.drawn ? unit(candidate.drawn) : units[i]!));
  const partUnits = parts.map((part) => unit(part.vector));
  const closest = drawn.map((vector) => closestPart(vector, partUnits));
  const picked: number[] = [];
  const covered = new Set<number>();
  const basis: Float64Array[] = [];
  let residual: Float64Array = Float64Array.from(query);
  const gains: number[] = [];
  while (picked.length < k) {
    let best = -1;
    let bestGain = -Infinity;
    for (let i = 0; i < candidates.length; i++) {
      if (picked.includes(i)) continue;
      if (picked.length === 0 && candidates[i]!.similarity < firstFloor) continue;
      if (picked.length > 0) {
        if (picked.some((j) => dot(drawn[i]!, drawn[j]!) > options.maxOverlap)) continue;
        const part = closest[i];
        if (!part || covered.has(part.index) || part.similarity < options.minPartSimilarity) continue;
      }
      const gain = dot(residual, units[i]!) + (candidates[i]!.bonus ?? 0);
      if (gain > bestGain) [best, bestGain] = [i, gain];
    }
    if (best < 0) break;
    picked.push(best);
    gains.push(bestGain);
    if (closest[best]) covered.add(closest[best]!.index);
    const axis = orthogonalised(units[best]!, basis);
    basis.push(axis);
    residual = orthogonalised(residual, [axis], false);
  }
  return picked.map((i, n) => {
    const { vector: _vector, bonus: _bonus, drawn: _drawn, ...hit } = candidates[i]!;
    const part = closest[i];
    return { ...hit, gain: gains[n]!, ...(part ? { covers: { part: parts[part.index]!.text, similarity: part.similarity } } : {}) };
  });
}

function closestPart(vector: Float64Array, parts: Float64Array[]): { index: number; similarity: number } | undefined {
  let found: { index: number; similarity: number } | undefined;
  parts.forEach((part, index) => {
    const similarity = dot(vector, part);
    if (!found || similarity > found.similarity) found = { index, similarity };
  });
  return found;
}

/** `vector` minus its projection on the orthonormal `basis`; normalised to unit length unless `normalise` is false. */
function orthogonalised(vector: Float64Array, basis: Float64Array[], normalise = true): Float64Array {
  const out = Float64Array.from(vector);
  for (const axis of basis) {
    const along = dot(out, axis);
    for (let d = 0; d < out.length; d++) out[d] = out[d]! - along * axis[d]!;
  }
  if (!normalise) return out;
  const norm = Math.sqrt(dot(out, out));
  return norm > 1e-9 ? out.map((value) => value / norm) : out.fill(0);
}

function unit(vector: ArrayLike<number>): Float64Array {
  const out = Float64Array.from(vector);
  const norm = Math.sqrt(dot(out, out));
  return norm > 0 ? out.map((value) => value / norm) : out;
}

export function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const norms = Math.sqrt(dot(a, a) * dot(b, b));
  return norms > 0 ? dot(a, b) / norms : 0;
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += a[i]! * b[i]!;
  return sum;
}
