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
}
