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
  /** The LoRA encoder's embedding: a unit vector in the text encoder's space. For a LoRA of a family that has no
   *  encoder yet (encoder_version ""), its text embedding stands in; empty when it has no text either. */
  vector: number[];
  /** The embedding of what the LoRA's text says (trigger words, tags, captions, training tags; lora-text.ts), a
   *  unit vector in the same space; absent when the LoRA came with no text. */
  text_vector?: number[];
  /** False for a LoRA indexed before LoRAs got text embeddings: the host's backfill still has to embed its text. */
  text_checked?: boolean;
  /** The LoRA encoder that made `vector`; "" when no encoder did (see `embedding`). */
  encoder_version: string;
  added_at: string;
  /** What `vector` holds (derived from encoder_version and the text; set when read from the index). */
  embedding?: EmbeddingKind;
}

/** Which embedding a LoRA is searched by: its weights' (the LoRA encoder's); its text's, when its family has no
 *  encoder yet; or none (no encoder and no text: stored, but not found by any search until one of them exists). */
export type EmbeddingKind = "weights" | "text" | "none";

export function embeddingKind(lora: { encoder_version: string; text_vector?: number[] }, hasText = !!lora.text_vector?.length): EmbeddingKind {
  return lora.encoder_version !== "" ? "weights" : hasText ? "text" : "none";
}

export interface LoraFilters {
  family?: string;
  /** Default for search: only active LoRAs. */
  state?: LoraState;
  /** "block" leaves out LoRAs marked nsfw. */
  nsfw?: "block" | "allow";
  /** LoRAs with at least one of these tags. */
  tags?: string[];
  /** Only LoRAs searched by this embedding. */
  embedding?: EmbeddingKind;
}

export type LoraSummary = Omit<LoraRecord, "vector" | "text_vector">;

/** Which embedding a search compares with: the LoRA's weights (the encoder's) or its text. */
export type EmbeddingColumn = "vector" | "text_vector";

export interface SearchHit {
  lora: LoraSummary;
  /** Cosine similarity between the query and the LoRA's embedding. */
  similarity: number;
}

export interface LoraIndex {
  /** Insert or replace by id, all records or none. */
  upsert(records: LoraRecord[]): Promise<void>;
  get(id: string): Promise<LoraRecord | undefined>;
  /** The LoRAs of these ids that the index has (any state), without their embeddings: one query for a batch. */
  summaries(ids: string[]): Promise<Map<string, LoraSummary>>;
  /** Every LoRA's id, any state: what the store's files are checked against. */
  ids(): Promise<Set<string>>;
  /** LoRAs whose sha256 starts with `prefix` (lower-case hex, 8+ characters), at most `limit` of them. */
  findByPrefix(prefix: string, limit?: number): Promise<LoraSummary[]>;
  /** LoRAs whose name contains `text` (case-insensitive), exact matches first, at most `limit`. */
  findByName(text: string, limit?: number): Promise<LoraSummary[]>;
  list(filters?: LoraFilters, limit?: number): Promise<LoraSummary[]>;
  /** The k most similar LoRAs to `vector` passing the filters, at or above `minSimilarity`, best first; with
   *  `withVectors`, each hit carries the LoRA's embeddings too. `column` "text_vector" searches the text
   *  embeddings (LoRAs without text are left out). */
  search(vector: number[], k: number, filters?: LoraFilters, minSimilarity?: number, withVectors?: boolean,
    column?: EmbeddingColumn): Promise<Array<SearchHit & { vector?: number[]; text_vector?: number[] }>>;
  /** LoRAs (any state) whose text has not been embedded yet: what the text backfill still has to do. */
  textUnchecked?(limit?: number): Promise<LoraSummary[]>;
  setState(id: string, state: LoraState): Promise<boolean>;
  remove(id: string): Promise<boolean>;
  count(filters?: LoraFilters): Promise<number>;
  /** LoRAs (any state) embedded by another encoder than `encoderVersion`: what a re-embed still has to do. */
  embeddedByOther(encoderVersion: string, limit?: number): Promise<LoraSummary[]>;
  /** Periodic upkeep (compaction, index refresh); resolves to a one-line summary. */
  maintain?(): Promise<string>;
}
