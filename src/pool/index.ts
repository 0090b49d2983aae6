// The pool's searchable index of LoRAs, apart from where it is kept (LanceDB embedded by default; see
// lancedb-index.ts). A LoRA's id is the sha256 of its file, so the same file is always the same LoRA.

export const LORA_STATES = ["active", "blocked"] as const;
export type LoraState = (typeof LORA_STATES)[number];

export interface LoraRecord {
  /** sha256 of the file, lower-case hex. */
  id: string;
  name: string;
  /** Where it came from: upload, bundle, civitai, huggingface, … */
  source: string;
  url: string;
  family: string;
  format: string;
  ranks: number[];
  modules: number;
  trigger_words: string[];
  tags: string[];
  /** Preview captions or descriptions, when the source has any (the caption baseline; never required). */
  captions: string[];
  license: string;
  nsfw: boolean;
  state: LoraState;
  /** The stored file's name in the pool store (LoraStore.pathOf(id) is its path). */
  file: string;
  bytes: number;
  /** The LoRA encoder's embedding: a unit vector in the text encoder's space. */
  vector: number[];
  encoder_version: string;
  added_at: string;
}

export interface LoraFilters {
  family?: string;
  /** Default for search: only active LoRAs. */
  state?: LoraState;
  /** "block" leaves out LoRAs marked nsfw. */
  nsfw?: "block" | "allow";
  /** LoRAs with at least one of these tags. */
  tags?: string[];
}

export interface SearchHit {
  lora: Omit<LoraRecord, "vector">;
  /** Cosine similarity between the query and the LoRA's embedding. */
  similarity: number;
}

export interface LoraIndex {
  /** Insert or replace by id, all records or none. */
  upsert(records: LoraRecord[]): Promise<void>;
  get(id: string): Promise<LoraRecord | undefined>;
  /** Every LoRA's id, any state: what the store's files are checked against. */
  ids(): Promise<Set<string>>;
  /** LoRAs whose sha256 starts with `prefix` (lower-case hex, 8+ characters), at most `limit` of them. */
  findByPrefix(prefix: string, limit?: number): Promise<Array<Omit<LoraRecord, "vector">>>;
  /** LoRAs whose name contains `text` (case-insensitive), exact matches first, at most `limit`. */
  findByName(text: string, limit?: number): Promise<Array<Omit<LoraRecord, "vector">>>;
  list(filters?: LoraFilters, limit?: number): Promise<Array<Omit<LoraRecord, "vector">>>;
  /** The k most similar LoRAs to `vector` passing the filters, at or above `minSimilarity`, best first; with
   *  `withVectors`, each hit carries the LoRA's embedding too. */
  search(vector: number[], k: number, filters?: LoraFilters, minSimilarity?: number, withVectors?: boolean): Promise<Array<SearchHit & { vector?: number[] }>>;
  setState(id: string, state: LoraState): Promise<boolean>;
  remove(id: string): Promise<boolean>;
  count(filters?: LoraFilters): Promise<number>;
  /** LoRAs (any state) embedded by another encoder than `encoderVersion`: what a re-embed still has to do. */
  embeddedByOther(encoderVersion: string, limit?: number): Promise<Array<Omit<LoraRecord, "vector">>>;
  /** Periodic upkeep (compaction, index refresh); resolves to a one-line summary. */
  maintain?(): Promise<string>;
}
