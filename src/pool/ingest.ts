// Adding LoRAs to the pool, in batches: each file is read once (hashed, its header validated and copied into the
// store's staging area together) → the batch's new LoRAs are moved into place under their store locks → one
// worker call reads and embeds them all → their text is embedded → one mergeInsert indexes them. The index write
// comes last and is atomic, so a failure anywhere leaves nothing of that LoRA searchable (its stored copy is
// removed); a file that fails fails alone; the same file twice is one LoRA. If the process dies in between, the
// locks it leaves tell the next sweep (sweep.ts) that the stored copies are orphans, while a live process's copies
// are never swept.
import { basename, resolve } from "node:path";
import { oneByOne } from "../gpu/backend.js";
import type { EmbedResult } from "../gpu/protocol.js";
import { embeddingKind, type LoraIndex, type LoraRecord, type LoraSummary } from "./index.js";
import { inspectLora } from "./inspect.js";
import { embedLoraTexts, loraTextPieces, type TextEmbedder } from "./lora-text.js";
import { InvalidLoraFileError, type SafetensorsLimits } from "./safetensors.js";
import type { LoraStore, StagedFile, StoreLock } from "./store.js";

export interface IngestDependencies {
  store: LoraStore;
  index: LoraIndex;
  /** The worker's /embed for a stored file (see WorkerDispatcher.embed). */
  embed: (path: string) => Promise<EmbedResult>;
  /** Many stored files in one worker call, in order, each its result or its own error (WorkerDispatcher.embedMany);
   *  without it, `embed` is called for each file. */
  embedMany?: (paths: string[]) => Promise<Array<EmbedResult | Error>>;
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

export interface IngestItem {
  file: string;
  metadata?: IngestMetadata;
}

export interface IngestOptions {
  /** LoRAs embedded by one worker call and indexed by one commit. Default 64. */
  batchSize?: number;
  /** Files read at once while staging. Default 4. */
  readers?: number;
  /** After each batch: how many of the files are done (added, already there or failed). */
  onProgress?: (done: number, total: number) => void;
}

/** Add one local file to the pool; throws why it cannot be added (InvalidLoraFileError for the file itself). */
export async function ingestLora(file: string, metadata: IngestMetadata, deps: IngestDependencies): Promise<IngestResult> {
  const [outcome] = await ingestLoras([{ file, metadata }], deps);
  if (outcome instanceof Error) throw outcome;
  return outcome!;
}

/** Add many local files to the pool: in order, each file's result or the error that kept it out (it fails alone). */
export async function ingestLoras(items: IngestItem[], deps: IngestDependencies, options: IngestOptions = {}): Promise<Array<IngestResult | Error>> {
  const batchSize = Math.max(1, options.batchSize ?? 64);
  const batches: IngestItem[][] = [];
  for (let start = 0; start < items.length; start += batchSize) batches.push(items.slice(start, start + batchSize));
  const stage = (batch: IngestItem[] | undefined) => batch && mapLimited(batch, options.readers ?? 4, (item) =>
    deps.store.stage(item.file, { limits: deps.limits, check: (header) => void inspectLora(header) }).catch((error: Error) => error));
  const outcomes: Array<IngestResult | Error> = [];
  // The next batch's files are read while the worker embeds this one's.
  let staging = stage(batches[0]);
  try {
    for (let n = 0; n < batches.length; n++) {
      const staged = await staging!;
      staging = stage(batches[n + 1]);
      outcomes.push(...await addBatch(batches[n]!, staged, deps));
      options.onProgress?.(outcomes.length, items.length);
    }
  } finally {
    // Stopped by an error: what was read ahead is not kept.
    const ahead = await staging?.catch(() => []);
    if (ahead) await Promise.all(ahead.map((copy) => copy instanceof Error ? undefined : deps.store.discard(copy)));
  }
  return outcomes;
}

/** LoRAs being added by this process now, by pool and sha256: a second add of the same file to the same pool waits
 *  for the first. (One process may hold several pools: the same file going into another is that pool's own add.) */
const inFlight = new Map<string, Promise<IngestResult>>();

function inFlightKey(deps: IngestDependencies, sha256: string): string {
  return `${resolve(deps.store.root)}\n${sha256}`;
}

interface Pending {
  /** Positions in the batch of the files with this content: the first one adds it, the others get "exists". */
  slots: number[];
  staged: StagedFile;
  metadata: IngestMetadata;
  file: string;
  promise: Promise<IngestResult>;
  settle: { resolve: (result: IngestResult) => void; reject: (error: Error) => void };
  done?: boolean;
  lock?: StoreLock;
  path?: string;
  record?: LoraRecord;
  noEmbedding?: string;
}

async function addBatch(items: IngestItem[], staged: Array<StagedFile | Error>, deps: IngestDependencies): Promise<Array<IngestResult | Error>> {
  const outcomes: Array<IngestResult | Error | undefined> = new Array(items.length);

  // One add per content; another add of it running in this process is waited for.
  const pending = new Map<string, Pending>();
  const waits: Array<Promise<void>> = [];
  const duplicates: StagedFile[] = [];
  staged.forEach((copy, slot) => {
    if (copy instanceof Error) return void (outcomes[slot] = copy);
    const mine = pending.get(copy.sha256);
    const running = !mine && inFlight.get(inFlightKey(deps, copy.sha256));
    if (mine || running) {
      if (mine) mine.slots.push(slot);
      duplicates.push(copy);
      if (running) waits.push(running.then((result) => void (outcomes[slot] = { ...result, status: "exists" }), (error: Error) => void (outcomes[slot] = error)));
      return;
    }
    let settle!: Pending["settle"];
    const promise = new Promise<IngestResult>((resolve, reject) => (settle = { resolve, reject }));
    promise.catch(() => undefined);
    inFlight.set(inFlightKey(deps, copy.sha256), promise);
    pending.set(copy.sha256, { slots: [slot], staged: copy, metadata: items[slot]!.metadata ?? {}, file: items[slot]!.file, promise, settle });
  });
  await Promise.all(duplicates.map((copy) => deps.store.discard(copy)));

  const finish = (entry: Pending, outcome: IngestResult | Error) => {
    if (entry.done) return;
    entry.done = true;
    entry.slots.forEach((slot, n) => (outcomes[slot] = n === 0 || outcome instanceof Error ? outcome : { ...outcome, status: "exists" }));
    if (outcome instanceof Error) entry.settle.reject(outcome);
    else entry.settle.resolve(outcome);
    const key = inFlightKey(deps, entry.staged.sha256);
    if (inFlight.get(key) === entry.promise) inFlight.delete(key);
  };
  try {
    await addNew([...pending.values()], deps, finish);
  } catch (error) {
    for (const entry of pending.values()) finish(entry, error as Error);
  } finally {
    for (const entry of pending.values()) {
      finish(entry, new Error("the add was interrupted"));
      await deps.store.discard(entry.staged);
      await entry.lock?.release();
    }
  }
  await Promise.all(waits);
  return outcomes as Array<IngestResult | Error>;
}

async function addNew(entries: Pending[], deps: IngestDependencies, finish: (entry: Pending, outcome: IngestResult | Error) => void): Promise<void> {
  const known = await deps.index.summaries(entries.map((entry) => entry.staged.sha256));
  let fresh = entries.filter((entry) => {
    const there = known.get(entry.staged.sha256);
    if (there) finish(entry, alreadyThere(there));
    return !there;
  });
  // Locks in hash order, so two processes adding overlapping batches never wait on each other in a circle.
  fresh.sort((a, b) => a.staged.sha256.localeCompare(b.staged.sha256));
  for (const entry of fresh) entry.lock = await deps.store.lock(entry.staged.sha256).catch((error: Error) => void finish(entry, error));
  fresh = fresh.filter((entry) => entry.lock);
  // Another process may have added some while we waited for the locks.
  const added = await deps.index.summaries(fresh.map((entry) => entry.staged.sha256));
  fresh = fresh.filter((entry) => {
    const there = added.get(entry.staged.sha256);
    if (there) finish(entry, alreadyThere(there));
    return !there;
  });
  if (fresh.length === 0) return;
  let committed: Pending[] = [];
  try {
    for (const entry of fresh) entry.path = await deps.store.adopt(entry.staged);
    const paths = fresh.map((entry) => entry.path!);
    const embedded = deps.embedMany ? await deps.embedMany(paths) : await oneByOne({ embed: deps.embed }, paths);
    const now = (deps.now?.() ?? new Date()).toISOString();
    const usable: Pending[] = [];
    fresh.forEach((entry, n) => {
      try {
        entry.record = recordOf(entry, embedded[n]!, now);
        entry.noEmbedding = (embedded[n] as EmbedResult).no_embedding;
        usable.push(entry);
      } catch (error) {
        finish(entry, error as Error);
      }
    });
    if (deps.embedText && usable.length > 0) {
      const texts = await embedLoraTexts(deps.embedText,
        usable.map((entry) => loraTextPieces({ ...entry.record!, name: entry.metadata.name }, entry.staged.header.metadata)));
      usable.forEach((entry, n) => {
        const record = entry.record!;
        if (texts[n]) record.text_vector = texts[n];
        // No encoder for its family yet: the text embedding is what it is searched by, until a re-embed replaces it.
        if (record.vector.length === 0 && record.text_vector) record.vector = record.text_vector;
      });
    }
    for (const entry of usable) {
      entry.record!.text_checked = !!deps.embedText;
      entry.record!.embedding = embeddingKind(entry.record!);
    }
    if (usable.length > 0) await deps.index.upsert(usable.map((entry) => entry.record!));
    committed = usable;
    for (const entry of usable) {
      const { vector: _vector, text_vector: _text, ...lora } = entry.record!;
      finish(entry, { status: "added", lora, ...searchNote(lora, entry.noEmbedding) });
    }
  } catch (error) {
    for (const entry of fresh) finish(entry, error as Error);
  } finally {
    // Under the lock, a stored copy with no index row is nobody's: it goes, whoever stored it. (After a failed
    // commit the index is asked: a write that failed late may have landed.)
    const left = fresh.filter((entry) => !committed.includes(entry));
    const indexed = committed.length > 0 || left.length === 0 ? new Map() : await deps.index.summaries(left.map((entry) => entry.staged.sha256));
    for (const entry of left) if (!indexed.has(entry.staged.sha256)) await deps.store.remove(entry.staged.sha256);
  }
}

/** The index row of a LoRA the worker read, or why it cannot be one. */
function recordOf(entry: Pending, embedded: EmbedResult | Error, now: string): LoraRecord {
  if (embedded instanceof Error) throw embedded;
  const { staged, metadata, file } = entry;
  if (embedded.sha256 !== staged.sha256) {
    throw new Error(`the worker read a different file (sha256 ${embedded.sha256}) than was stored (${staged.sha256})`);
  }
  const family = embedded.family ?? inspectLora(staged.header).family;
  if (!family) throw new InvalidLoraFileError("not-a-lora", "cannot tell which model family this LoRA is for from its layer shapes");
  return {
    id: staged.sha256,
    name: metadata.name?.trim() || basename(file).replace(/\.safetensors$/i, ""),
    source: metadata.source ?? "upload",
    url: metadata.url ?? "",
    family,
    format: embedded.format,
    ranks: embedded.ranks,
    modules: embedded.modules,
    trigger_words: metadata.trigger_words ?? [],
    tags: metadata.tags ?? [],
    captions: metadata.captions ?? [],
    license: metadata.license ?? "",
    nsfw: metadata.nsfw ?? false,
    state: "active",
    file: basename(entry.path!),
    bytes: staged.bytes,
    vector: embedded.embedding ?? [],
    encoder_version: embedded.encoder_version ?? "",
    text_checked: false,
    added_at: now,
  };
}

function alreadyThere(lora: LoraSummary): IngestResult {
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

/** `work` over `items` with at most `limit` running at once; results in order. */
async function mapLimited<T, R>(items: T[], limit: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const run = async () => {
    while (next < items.length) {
      const n = next++;
      results[n] = await work(items[n]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, run));
  return results;
}
