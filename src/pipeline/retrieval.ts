// Retrieval (paper eq. 4-5): embed the prompt with the frozen text encoder, then the k LoRAs whose weight
// embeddings are most similar by cosine, passing the filters and the similarity floor, with their scores.
import type { LoraFilters, LoraIndex, SearchHit } from "../pool/index.js";
import type { TextEncoder } from "./text-encoder.js";

export interface RetrievalOptions {
  k: number;
  minSimilarity: number;
  filters?: LoraFilters;
}

export interface Retrieval {
  hits: SearchHit[];
  timings: { encode_ms: number; search_ms: number };
}

export class Retriever {
  constructor(private readonly encoder: TextEncoder, private readonly index: LoraIndex) {}

  async retrieve(prompt: string, options: RetrievalOptions): Promise<Retrieval> {
    const started = performance.now();
    const [vector] = await this.encoder.embed([prompt]);
    const encoded = performance.now();
    const hits = options.k > 0
      ? await this.index.search(Array.from(vector!), options.k, options.filters, options.minSimilarity)
      : [];
    return { hits, timings: { encode_ms: encoded - started, search_ms: performance.now() - encoded } };
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

function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let dot = 0;
  let normA = 0;
  let normB = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i]! * b[i]!;
    normA += a[i]! * a[i]!;
    normB += b[i]! * b[i]!;
  }
  return normA > 0 && normB > 0 ? dot / Math.sqrt(normA * normB) : 0;
}
