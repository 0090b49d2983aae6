// `autolora pool add|list|remove|block|unblock`: the admin's view of the LoRA pool, on the configured data
// folder and workers.
import { parseArgs } from "node:util";
import { loadConfig } from "../config/load.js";
import { startWorkers } from "../gpu/workers.js";
import { encoderVersion, openModels } from "../models/lifecycle.js";
import { lancedbUri, openPool, type Pool } from "../pool/open.js";
import type { LoraState } from "../pool/index.js";
import { ingestLoras, type IngestMetadata, type IngestResult } from "../pool/ingest.js";
import { reembedPool } from "../pool/reembed.js";
import { InvalidLoraFileError } from "../pool/safetensors.js";
import { readFile } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import type { Config } from "../config/schema.js";
import { describeParts, Retriever, selectionSettings, type Selection } from "../pipeline/retrieval.js";
import { TextEncoder } from "../pipeline/text-encoder.js";
import { GenerationStore } from "../pipeline/generations.js";
import { CachedVotes } from "../pipeline/rating-prior.js";
import type { CliIo } from "./main.js";

export async function poolCommand(command: string, args: string[], io: CliIo): Promise<number> {
  const run = { add, list, search, remove, block: setState("blocked"), unblock: setState("active"), reembed }[command];
  if (!run) {
    io.stderr(`autolora pool: unknown command ${JSON.stringify(command)}; use inspect, add, list, search, remove, block, unblock or reembed`);
    return 2;
  }
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(args);
  } catch (error) {
    io.stderr(`autolora pool ${command}: ${(error as Error).message}`);
    return 2;
  }
  const { config, secrets } = loadConfig(io.env ?? process.env);
  const pool = await openPool(config, (line) => io.stderr(line));
  return run(parsed, pool, io, async () => startWorkers(config, secrets, (line) => io.stderr(line), await openModels(config)), config);
}

function parse(args: string[]) {
  return parseArgs({
    args, allowPositionals: true, strict: true,
    options: {
      name: { type: "string" }, tags: { type: "string" }, source: { type: "string" }, url: { type: "string" },
      "trigger-words": { type: "string" }, caption: { type: "string", multiple: true }, manifest: { type: "string" },
      license: { type: "string" }, nsfw: { type: "boolean" }, family: { type: "string" }, state: { type: "string" },
      json: { type: "boolean" }, k: { type: "string" }, "min-similarity": { type: "string" }, selection: { type: "string" },
    },
  });
}

type Parsed = ReturnType<typeof parse>;

/** "a, b,,c" → ["a", "b", "c"]; undefined stays undefined. */
function commaList(value: string | undefined): string[] | undefined {
  return value?.split(",").map((item) => item.trim()).filter(Boolean);
}
type Run = (parsed: Parsed, pool: Pool, io: CliIo, workers: () => ReturnType<typeof startWorkers>, config: Config) => Promise<number>;

/** One file `pool add` ingests, with what is known of it. */
interface AddItem { file: string; metadata: IngestMetadata }

const ADD_BATCH = 64;

const add: Run = async ({ positionals, values }, pool, io, workers, config) => {
  if (positionals.length === 0 && !values.manifest) {
    io.stderr("usage: autolora pool add FILE... [--name N] [--tags a,b] [--trigger-words a,b] [--caption TEXT]... [--source S] " +
      "[--url U] [--license L] [--nsfw] | autolora pool add --manifest FILE");
    return 2;
  }
  if (values.name && positionals.length > 1) {
    io.stderr("autolora pool add: --name names one file; add files one at a time to name each");
    return 2;
  }
  let items: AddItem[];
  try {
    items = values.manifest ? await readManifest(values.manifest) : [];
  } catch (error) {
    io.stderr(`autolora pool add: ${(error as Error).message}`);
    return 2;
  }
  items.push(...positionals.map((file) => ({
    file, metadata: {
      name: values.name, source: values.source ?? "upload", url: values.url, license: values.license,
      nsfw: values.nsfw ?? false, tags: commaList(values.tags), trigger_words: commaList(values["trigger-words"]),
      captions: values.caption?.map((caption) => caption.trim()).filter(Boolean),
    },
  })));
  const started = await workers();
  const encoder = await TextEncoder.load(resolve(config.text_encoder_dir));
  let failed = 0;
  try {
    const report = (file: string, outcome: IngestResult | Error) => {
      if (outcome instanceof Error) {
        failed += 1;
        // A refusal that names the file itself (a FIFO, a directory) is not prefixed with it again.
        io.stderr(outcome instanceof InvalidLoraFileError && outcome.path === file ? outcome.message : `${file}: ${outcome.message}`);
        return;
      }
      const { status, lora, note } = outcome;
      io.stdout(values.json ? JSON.stringify({ path: file, status, ...lora, ...(note ? { note } : {}) })
        : `${status === "added" ? "added" : "already in the pool"}: ${lora.id.slice(0, 12)} ${lora.name} ` +
          `(${lora.format}, ${lora.family}, rank ${lora.ranks.join("/")})${note ? `; ${note}` : ""}`);
    };
    const deps = { ...pool, embed: (path: string) => started.dispatcher.embed(path),
      embedMany: (paths: string[]) => started.dispatcher.embedMany(paths), embedText: encoder };
    // In batches (one worker call and one index commit each), each file answered as its batch ends.
    for (let start = 0; start < items.length; start += ADD_BATCH) {
      const batch = items.slice(start, start + ADD_BATCH);
      (await ingestLoras(batch, deps, { batchSize: ADD_BATCH })).forEach((outcome, n) => report(batch[n]!.file, outcome));
      if (start + batch.length < items.length && !values.json) io.stderr(`${start + batch.length}/${items.length} files done`);
    }
  } finally {
    await Promise.all([started.stop(), encoder.close()]);
  }
  return failed > 0 ? 2 : 0;
};

/** `--manifest FILE`: {"loras": [{"file", "name"?, "tags"?, "trigger_words"?, "captions"?, "source"?, "url"?,
 *  "license"?, "nsfw"?}]}, files relative to the manifest (what `tiny-flux-loras` writes; other keys are ignored).
 *  Every entry is checked before anything is added. */
async function readManifest(path: string): Promise<AddItem[]> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(path, "utf8"));
  } catch (error) {
    throw new Error(`cannot read the manifest ${path}: ${(error as Error).message}`);
  }
  const entries = (parsed as { loras?: unknown })?.loras;
  if (!Array.isArray(entries)) throw new Error(`${path}: expected {"loras": [{"file": …}, …]}`);
  const strings = (value: unknown, key: string, n: number) => {
    if (value === undefined) return undefined;
    if (!Array.isArray(value) || value.some((item) => typeof item !== "string")) throw new Error(`${path}: loras[${n}].${key} must be a list of strings`);
    return value as string[];
  };
  return entries.map((entry: Record<string, unknown>, n) => {
    if (typeof entry?.file !== "string" || !entry.file) throw new Error(`${path}: loras[${n}] has no "file"`);
    for (const key of ["name", "source", "url", "license"]) {
      if (entry[key] !== undefined && typeof entry[key] !== "string") throw new Error(`${path}: loras[${n}].${key} must be a string`);
    }
    if (entry.nsfw !== undefined && typeof entry.nsfw !== "boolean") throw new Error(`${path}: loras[${n}].nsfw must be true or false`);
    return {
      file: resolve(dirname(path), entry.file),
      metadata: {
        name: entry.name as string | undefined, source: (entry.source as string | undefined) ?? "upload",
        url: entry.url as string | undefined, license: entry.license as string | undefined, nsfw: (entry.nsfw as boolean | undefined) ?? false,
        tags: strings(entry.tags, "tags", n), trigger_words: strings(entry.trigger_words, "trigger_words", n),
        captions: strings(entry.captions, "captions", n),
      },
    };
  });
}

/** Embed every LoRA that the workers' encoder did not embed (another encoder, or none: found by text until now). */
const reembed: Run = async ({ positionals, values }, pool, io, workers) => {
  if (positionals.length > 0) {
    io.stderr("usage: autolora pool reembed [--json]");
    return 2;
  }
  const started = await workers();
  try {
    const version = await encoderVersion(started.source);
    if (!version) {
      io.stderr("the workers have no LoRA encoder: nothing to embed with (a FLUX host: autolora retrain --encoder first)");
      return 2;
    }
    const report = await reembedPool({ ...pool, encoderVersion: version, embed: (path) => started.dispatcher.embed(path),
      log: values.json ? undefined : io.stderr });
    io.stdout(values.json ? JSON.stringify(report)
      : `${report.reembedded} LoRAs embedded with ${version} in ${report.seconds} s` +
        (report.skipped.length ? `; ${report.skipped.length} skipped: ${report.skipped.map((entry) => `${entry.id.slice(0, 12)} (${entry.reason})`).join(", ")}` : ""));
    return 0;
  } finally {
    await started.stop();
  }
};

const list: Run = async ({ values }, pool, io) => {
  const state = values.state as LoraState | undefined;
  if (state && state !== "active" && state !== "blocked") {
    io.stderr(`autolora pool list: --state must be active or blocked, got ${JSON.stringify(state)}`);
    return 2;
  }
  const tags = commaList(values.tags);
  const loras = await pool.index.list({ family: values.family, state, tags });
  for (const lora of loras) {
    io.stdout(values.json ? JSON.stringify(lora) : `${lora.id.slice(0, 12)}  ${lora.state.padEnd(7)}  ${lora.family.padEnd(14)}  ` +
      `${lora.format.padEnd(9)}  rank ${lora.ranks.join("/").padEnd(5)}  ${lora.name}${lora.tags.length ? `  [${lora.tags.join(", ")}]` : ""}`);
  }
  if (!values.json) io.stderr(`${loras.length} LoRA${loras.length === 1 ? "" : "s"}`);
  return 0;
};

const search: Run = async ({ positionals, values }, pool, io, _workers, config) => {
  const text = positionals.join(" ").trim();
  const k = Number(values.k ?? 5);
  const floor = Number(values["min-similarity"] ?? -1);
  const selection = values.selection ?? config.retrieval.selection;
  if (!text || !Number.isInteger(k) || k < 1 || k > 100 || !(floor >= -1 && floor <= 1) || !["top-k", "covering"].includes(selection)) {
    io.stderr("usage: autolora pool search TEXT [--k 1-100] [--min-similarity -1..1] [--selection top-k|covering] [--family F] [--tags a,b] [--json]");
    return 2;
  }
  const encoder = await TextEncoder.load(resolve(config.text_encoder_dir));
  try {
    const tags = commaList(values.tags);
    const generations = await GenerationStore.open(lancedbUri(config));
    const { hits } = await new Retriever(encoder, pool.index, new CachedVotes(() => generations.ratingsByLora())).retrieve(text, {
      k, minSimilarity: floor, filters: { family: values.family, tags, nsfw: config.retrieval.nsfw },
      ...selectionSettings(config.retrieval), selection: selection as Selection,
    });
    for (const { lora, similarity, covers, gain, parts } of hits) {
      io.stdout(values.json ? JSON.stringify({ similarity, ...(parts ? { parts } : {}), ...(covers ? { covers, gain } : {}), ...lora })
        : `${similarity.toFixed(3)}  ${lora.id.slice(0, 12)}  ${lora.name}${parts ? `  [${describeParts(parts)}]` : ""}` +
          `${covers ? `  covers “${covers.part}” (${covers.similarity.toFixed(3)})` : ""}`);
    }
    if (!values.json && hits.length === 0) io.stderr("no LoRA matches");
    return 0;
  } finally {
    await encoder.close();
  }
};

/** A full sha256, or a prefix of at least 8 hex characters that names exactly one LoRA. */
async function resolveId(pool: Pool, given: string | undefined, io: CliIo): Promise<string | undefined> {
  if (!given || !/^[0-9a-f]{8,64}$/.test(given)) {
    io.stderr("give the LoRA's sha256, or at least its first 8 hex characters (see `autolora pool list`)");
    return undefined;
  }
  const matches = await pool.index.findByPrefix(given, 2);
  if (matches.length !== 1) {
    io.stderr(matches.length === 0 ? `no LoRA ${given} in the pool` : `${given} matches more than one LoRA; give more of the sha256`);
    return undefined;
  }
  return matches[0]!.id;
}

const remove: Run = async ({ positionals }, pool, io) => {
  const id = await resolveId(pool, positionals[0], io);
  if (!id) return 2;
  await pool.index.remove(id);
  await pool.store.remove(id);
  io.stdout(`removed ${id}`);
  return 0;
};

function setState(state: LoraState): Run {
  return async ({ positionals }, pool, io) => {
    const id = await resolveId(pool, positionals[0], io);
    if (!id) return 2;
    await pool.index.setState(id, state);
    io.stdout(`${state === "blocked" ? "blocked" : "unblocked"} ${id}`);
    return 0;
  };
}
