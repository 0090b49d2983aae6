// Adding a LoRA to the pool: validate the container here → store it by content → the worker reads and embeds
// it → one mergeInsert into the index. The index write comes last and is atomic, so a failure anywhere leaves
// nothing searchable (and the stored copy is removed); the same file twice is one LoRA. The steps from storing to
// indexing run under the LoRA's store lock: if the process dies in between, the lock it leaves tells the next
// sweep (sweep.ts) that the stored copy is an orphan, while a live process's copy is never swept.
import { basename } from "node:path";
import type { EmbedResult } from "../gpu/protocol.js";
import { embeddingKind, type LoraIndex, type LoraRecord, type LoraSummary } from "./index.js";
import { inspectLora } from "./inspect.js";
import { embedLoraText, loraTextPieces, type TextEmbedder } from "./lora-text.js";
import { DEFAULT_LIMITS, InvalidLoraFileError, readSafetensorsHeader, type SafetensorsLimits } from "./safetensors.js";
import { sha256File, type LoraStore } from "./store.js";

export interface IngestDependencies {
  store: LoraStore;
  index: LoraIndex;
  /** The worker's /embed for a stored file (see WorkerDispatcher.embed). */
  embed: (path: string) => Promise<EmbedResult>;
  /** The frozen text encoder, for the LoRA's text embedding (lora-text.ts); without it the LoRA is indexed by its
   *  weights alone and the text backfill embeds its text later. */
  embedText?: TextEmbedder;
  limits?: SafetensorsLimits;
  now?: () => Date;
}

/** What the source knows about the LoRA; all optional. */
export interface IngestMetadata {
  name?: string;
  source?: string;
  url?: string;
  tags?: string[];
  trigger_words?: string[];
  captions?: string[];
  license?: string;
  nsfw?: boolean;
}

export interface IngestResult {
  status: "added" | "exists";
  lora: LoraSummary;
  /** Set when the LoRA cannot be found by weights: why, and what it is searched by instead (if anything). */
  note?: string;
}

const inFlight = new Map<string, Promise<IngestResult>>();

export async function ingestLora(file: string, metadata: IngestMetadata, deps: IngestDependencies): Promise<IngestResult> {
  const header = await readSafetensorsHeader(file, deps.limits ?? DEFAULT_LIMITS);
  const inspected = inspectLora(header);
  const sha256 = await sha256File(file);
  // Two ingests of the same file at once in this process share one run (other processes wait on the store lock).
  const running = inFlight.get(sha256);
  if (running) return running.then((result) => ({ ...result, status: "exists" as const }));
  const run = ingestNew(file, sha256, header.fileBytes, inspected.family, metadata, header.metadata, deps);
  inFlight.set(sha256, run);
  try {
    return await run;
  } finally {
    inFlight.delete(sha256);
  }
}

async function ingestNew(file: string, sha256: string, bytes: number, family: string | null, metadata: IngestMetadata,
  fileMetadata: Record<string, string>, deps: IngestDependencies): Promise<IngestResult> {
  const existing = await deps.index.get(sha256);
  if (existing) return alreadyThere(existing);
  const lock = await deps.store.lock(sha256);
  try {
    // Another process may have added it while we waited for the lock.
    const added = await deps.index.get(sha256);
    if (added) return alreadyThere(added);
    const path = await deps.store.put(file, sha256);
    try {
      return await embedAndIndex(file, path, sha256, bytes, family, metadata, fileMetadata, deps);
    } catch (error) {
      // Under the lock, a stored copy with no index row is nobody's: it goes, whoever stored it.
      if (!(await deps.index.get(sha256))) await deps.store.remove(sha256);
      throw error;
    }
  } finally {
    await lock.release();
  }
}

function alreadyThere(record: LoraRecord): IngestResult {
  const { vector: _vector, text_vector: _text, ...lora } = record;
  return { status: "exists", lora, ...searchNote(lora, undefined) };
}

/** What a user is told about a LoRA that no LoRA encoder embedded: found by its text only, or by nothing yet. */
function searchNote(lora: LoraSummary, reason: string | undefined): { note?: string } {
  const why = reason ?? `no LoRA encoder has embedded it (none for ${lora.family} yet)`;
  if (lora.embedding === "text") return { note: `searchable by its text only: ${why}` };
  if (lora.embedding === "none") {
    return { note: `stored but not searchable: ${why}, and it came with no text (name, trigger words, tags, captions or ` +
      "training tags); add some with its source, or it becomes searchable once an encoder for its family embeds it" };
  }
  return {};
}

async function embedAndIndex(file: string, path: string, sha256: string, bytes: number, family: string | null,
  metadata: IngestMetadata, fileMetadata: Record<string, string>, deps: IngestDependencies): Promise<IngestResult> {
  const embedded = await deps.embed(path);
  if (embedded.sha256 !== sha256) {
    throw new Error(`the worker read a different file (sha256 ${embedded.sha256}) than was stored (${sha256})`);
  }
  const modelFamily = embedded.family ?? family;
  if (!modelFamily) {
    throw new InvalidLoraFileError("not-a-lora", "cannot tell which model family this LoRA is for from its layer shapes");
  }
  const record: LoraRecord = {
    id: sha256,
    name: metadata.name?.trim() || basename(file).replace(/\.safetensors$/i, ""),
    source: metadata.source ?? "upload",
    url: metadata.url ?? "",
    family: modelFamily,
    format: embedded.format,
    ranks: embedded.ranks,
    modules: embedded.modules,
    trigger_words: metadata.trigger_words ?? [],
    tags: metadata.tags ?? [],
    captions: metadata.captions ?? [],
    license: metadata.license ?? "",
    nsfw: metadata.nsfw ?? false,
    state: "active",
    file: basename(path),
    bytes,
    vector: embedded.embedding ?? [],
    encoder_version: embedded.encoder_version ?? "",
    text_checked: !!deps.embedText,
    added_at: (deps.now?.() ?? new Date()).toISOString(),
  };
  if (deps.embedText) {
    const pieces = loraTextPieces({ ...record, name: metadata.name }, fileMetadata);
    const text = await embedLoraText(deps.embedText, pieces);
    if (text) record.text_vector = text;
  }
  // No encoder for its family yet: the text embedding is what it is searched by, until a re-embed replaces it.
  if (!embedded.embedding && record.text_vector) record.vector = record.text_vector;
  record.embedding = embeddingKind(record);
  await deps.index.upsert([record]);
  const { vector: _vector, text_vector: _text, ...lora } = record;
  return { status: "added", lora, ...searchNote(lora, embedded.no_embedding) };
}
