// The bundle's pool as the benchmarks see it: one split's LoRAs ingested through the product (validate, hash,
// store, embed on the real worker, index), with the text a community LoRA would bring, and prompts about them in
// phrasings no training caption used (`python -m autolora_worker world prompts`).
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { loadConfig } from "../config/load.js";
import type { Config } from "../config/schema.js";
import type { WorkerDispatcher } from "../gpu/dispatch.js";
import { startWorkers, workerPython, type Workers } from "../gpu/workers.js";
import { openModels } from "../models/lifecycle.js";
import type { TextEmbedder } from "../pipeline/retrieval.js";
import { TextEncoder } from "../pipeline/text-encoder.js";
import { ingestLoras } from "../pool/ingest.js";
import { LanceLoraIndex } from "../pool/lancedb-index.js";
import { LoraStore } from "../pool/store.js";

export interface PromptSet {
  split: string;
  seed: number;
  singles: Array<{ prompt: string; concepts: string[] }>;
  pairs: Array<{ prompt: string; concepts: string[] }>;
  loras: Array<{ id: string; file: string; kind: string; concept: string | null }>;
}

/** Every UNDOCUMENTED_EVERY-th LoRA of the bundle's listing comes with no text, as undocumented LoRAs do. */
export const UNDOCUMENTED_EVERY = 3;

export interface BenchWorld {
  config: Config;
  /** The benchmark's own data folder, removed afterwards. */
  data: string;
  python: string;
  encoder: TextEncoder;
  workers: Workers;
}

/**
 * Run a bundle benchmark in a data folder of its own (so the worker embeds with the bundle's encoder, not whatever
 * data/models serves), with the host's text encoder and the configured workers; everything is stopped and the
 * folder removed afterwards, whatever happens.
 */
export async function withBenchWorld<T>(name: string, run: (world: BenchWorld) => Promise<T>): Promise<T> {
  const data = await mkdtemp(join(tmpdir(), `autolora-${name}-bench-`));
  const undo: Array<() => Promise<unknown>> = [() => rm(data, { recursive: true, force: true })];
  try {
    const { config, secrets } = loadConfig({ ...process.env, AUTOLORA_SEED_POOL_FROM_BUNDLE: "false", AUTOLORA_DATA_DIR: data });
    const encoder = await TextEncoder.load(config.text_encoder_dir);
    undo.unshift(() => encoder.close());
    const workers = await startWorkers(config, secrets, () => undefined, await openModels(config));
    undo.unshift(() => workers.stop());
    return await run({ config, data, python: workerPython(config), encoder, workers });
  } finally {
    for (const step of undo) await step();
  }
}

/** The prompts `world prompts` draws for one split's LoRAs with this seed. */
export async function loadPromptSet(python: string, bundleDir: string, split: string, seed: number): Promise<PromptSet> {
  const { stdout } = await promisify(execFile)(python,
    ["-m", "autolora_worker", "world", "prompts", "--split", split, "--seed", String(seed), "--bundle", bundleDir],
    { maxBuffer: 16 << 20 });
  return JSON.parse(stdout) as PromptSet;
}

/**
 * The text each bundle LoRA comes with: its previews' prompts, as a community LoRA comes with its preview prompts,
 * except every UNDOCUMENTED_EVERY-th by its place in the listing, which comes with none. Names are left out: the
 * bundle's names are its ground truth.
 */
export function bundleTexts(bundleDir: string): Map<string, string[]> {
  const listing = (JSON.parse(readFileSync(join(bundleDir, "pool", "pool.json"), "utf8")) as
    { loras: Array<{ id: string; previews: Array<{ caption: string }> }> }).loras;
  return new Map(listing.map((lora, n) => [lora.id,
    n % UNDOCUMENTED_EVERY === UNDOCUMENTED_EVERY - 1 ? [] : lora.previews.map((preview) => preview.caption)]));
}

/** Embeddings cached by text: benchmarks ask for the same prompts and words many times. */
export function cached(encoder: TextEmbedder): TextEmbedder {
  const memo = new Map<string, ArrayLike<number>>();
  return {
    async embed(texts) {
      const missing = [...new Set(texts.filter((text) => !memo.has(text)))];
      if (missing.length) (await encoder.embed(missing)).forEach((vector, n) => memo.set(missing[n]!, vector));
      return texts.map((text) => memo.get(text)!);
    },
  };
}

export interface IngestedSplit {
  index: LanceLoraIndex;
  store: LoraStore;
  /** The concept each ingested LoRA draws, by pool id (null: off-concept). */
  concepts: Map<string, string | null>;
  /** LoRAs that came with text. */
  documented: number;
}

/** Ingest a prompt set's LoRAs into a pool of their own under `folder`. */
export async function ingestSplit(folder: string, set: PromptSet, bundleDir: string, texts: Map<string, string[]>,
  dispatcher: Pick<WorkerDispatcher, "embed" | "embedMany">, encoder: TextEmbedder): Promise<IngestedSplit> {
  const index = await LanceLoraIndex.open({ uri: join(folder, "lancedb") });
  const store = new LoraStore(join(folder, "pool"));
  const outcomes = await ingestLoras(set.loras.map((lora) => ({
    file: join(bundleDir, lora.file), metadata: { source: "bundle", captions: texts.get(lora.id) ?? [] },
  })), { store, index, embed: (path) => dispatcher.embed(path), embedMany: (paths) => dispatcher.embedMany(paths), embedText: encoder });
  const concepts = new Map<string, string | null>();
  outcomes.forEach((outcome, n) => {
    if (outcome instanceof Error) throw new Error(`${set.loras[n]!.file}: ${outcome.message}`);
    concepts.set(outcome.lora.id, set.loras[n]!.concept);
  });
  const documented = set.loras.filter((lora) => (texts.get(lora.id) ?? []).length > 0).length;
  return { index, store, concepts, documented };
}
