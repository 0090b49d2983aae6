// Retraining the gates and deciding whether the result is served: a candidate is trained by the worker's Python
// (`gates train`, starting from the served gates unless told otherwise), measured on held-out LoRAs (`gates
// eval`), and promoted only if it is not worse than the served version on every chosen metric. Promotion swaps
// the serving file and tells every ready worker to reload it, so no worker restarts.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { WorkerBackend } from "../gpu/backend.js";
import { workerEnvironment } from "../gpu/supervisor.js";
import type { GenerationStore } from "../pipeline/generations.js";
import type { LoraIndex } from "../pool/index.js";
import type { LoraStore } from "../pool/store.js";
import type { ModelRegistry } from "./registry.js";

/** Metrics where lower is better; the others (accuracies, recall, MRR) are better higher. */
const LOWER_IS_BETTER = new Set(["heldout_loss"]);

/** How the worker's Python trains and measures each kind. */
const TRAINING = {
  gates: {
    defaultMetrics: ["heldout_loss"],
    train: (out: string, extras?: string) => ["gates", "train", "--out", out, ...(extras ? ["--examples", extras] : [])],
    evaluate: (file: string, options: RetrainOptions) => ["gates", "eval", "--gates", file, "--pairs", String(options.evalPairs ?? 6)],
  },
  encoder: {
    defaultMetrics: ["recall_at_1", "mrr"],
    train: (out: string, extras?: string) => ["encoder", "train", "--out", out, ...(extras ? ["--extra", extras] : [])],
    evaluate: (folder: string) => ["encoder", "eval", "--encoder", folder],
  },
} as const;

export interface RetrainOptions {
  registry: ModelRegistry;
  /** The Python with autolora_worker installed (the workers' own). */
  python: string;
  bundleDir: string;
  /** Ready workers to reload after a promotion. */
  workers: () => WorkerBackend[];
  /** Training steps of a candidate. */
  steps: number;
  /** Start from the served gates (a fine-tune, default) or from fresh ones. */
  init?: "serving" | "fresh" | string;
  /** The metrics a candidate must not be worse on. Default ["heldout_loss"]. */
  metrics?: string[];
  /** Held-out pairs drawn for the accuracy metrics. Default 6. */
  evalPairs?: number;
  /** Writes the manifest of extra training data (gates: highly rated generations; encoder: crawled LoRAs with
   *  captions) into `folder`, returning its path (undefined: none). */
  extras?: (folder: string) => Promise<string | undefined>;
  log?: (line: string) => void;
}

export interface RetrainOutcome {
  promoted: boolean;
  candidate: { version: string; metrics: Record<string, number> };
  serving: { version: string; metrics: Record<string, number> };
  summary: string;
}

/** The manifest `encoder train --extra` reads: crawled LoRAs of the pool with the captions their source gave. */
export async function writeCaptionedLoras(index: LoraIndex, store: LoraStore, folder: string, limit = 5000): Promise<string | undefined> {
  const examples = [];
  for (const lora of await index.list({}, limit)) {
    if (lora.captions.length === 0 || lora.source === "bundle" || !existsSync(store.pathOf(lora.id))) continue;
    examples.push({ lora: store.pathOf(lora.id), captions: lora.captions.slice(0, 20) });
  }
  if (examples.length === 0) return undefined;
  const path = join(folder, "captioned-loras.json");
  await writeFile(path, JSON.stringify({ examples }));
  return path;
}

/** The manifest `gates train --examples` reads: each highly rated generation's prompt, images and LoRA files. */
export async function writeRatedExamples(generations: GenerationStore, store: LoraStore, dataDir: string, folder: string,
  minScore: number): Promise<string | undefined> {
  const examples = [];
  for (const { generation } of await generations.highlyRated(minScore)) {
    const loras = generation.loras.map((lora) => store.pathOf(lora.id)).filter((path) => existsSync(path));
    const images = generation.seeds.map((_, index) => join(dataDir, generation.images, `${index + 1}.png`)).filter((path) => existsSync(path));
    if (loras.length > 0 && images.length > 0) examples.push({ prompt: generation.prompt, images, loras, generation: generation.id });
  }
  if (examples.length === 0) return undefined;
  const path = join(folder, "rated-examples.json");
  await writeFile(path, JSON.stringify({ examples }));
  return path;
}

/** Train a candidate of the registry's kind, judge it against the served version, promote it if not worse. */
export async function retrainModel(options: RetrainOptions, signal?: AbortSignal): Promise<RetrainOutcome> {
  const { registry } = options;
  if (registry.kind.name === "encoder-flux") throw new Error("the flux encoder is bootstrapped (bootstrapFluxEncoder), not retrained from a bundle");
  const kind = TRAINING[registry.kind.name];
  const metricNames = options.metrics ?? [...kind.defaultMetrics];
  const work = join(registry.dir, "work");
  await mkdir(work, { recursive: true });
  let serving = registry.serving();
  if (!serving.metrics || metricNames.some((name) => !(name in serving.metrics!))) {
    options.log?.(`[retrain] measuring the served ${registry.kind.name} ${serving.version}`);
    await registry.setMetrics(serving.version, await evaluate(options, serving.file, signal));
    serving = registry.serving();
  }
  const candidateFile = join(work, `candidate-${Date.now()}${registry.kind.extension}`);
  try {
    const fromServing = options.init === undefined || options.init === "serving";
    const init = options.init === "fresh" ? [] : ["--init", fromServing ? serving.file : options.init!];
    const origin = options.init === "fresh" ? "scratch" : fromServing ? serving.version : options.init!;
    options.log?.(`[retrain] training a ${registry.kind.name} candidate (${options.steps} steps, from ${origin})`);
    const extras = await options.extras?.(work);
    const trained = await python(options, [...kind.train(candidateFile, extras), "--steps", String(options.steps),
      "--seed", String(Date.now() % 100_000), ...init], signal);
    const metrics = await evaluate(options, candidateFile, signal);
    const servingMetrics = serving.metrics!;
    const worse = metricNames.filter((name) => LOWER_IS_BETTER.has(name) ? metrics[name]! > servingMetrics[name]! : metrics[name]! < servingMetrics[name]!);
    const comparison = metricNames.map((name) => `${name} ${round(servingMetrics[name]!)} → ${round(metrics[name]!)}`).join(", ");
    const version = String(trained.version);
    if (worse.length > 0) {
      await registry.addCandidate(candidateFile, metrics, "refused", `worse on ${worse.join(", ")} than ${serving.version}`);
      const summary = `kept ${serving.version}: candidate ${version} is worse (${comparison})`;
      return { promoted: false, candidate: { version, metrics }, serving: { version: serving.version, metrics: servingMetrics }, summary };
    }
    await registry.addCandidate(candidateFile, metrics, "retired", `trained from ${origin} for ${options.steps} steps` +
      `${trained.rated_examples ? ` with ${String(trained.rated_examples)} rated generations` : ""}` +
      `${trained.crawled_loras ? ` with ${String(trained.crawled_loras)} crawled LoRAs` : ""}`);
    await registry.promote(version, `promoted over ${serving.version} (${comparison})`);
    const reloaded = await reloadWorkers(registry, options.workers(), options.log);
    const summary = `promoted ${version} over ${serving.version} (${comparison}); ${reloaded} worker(s) reloaded`;
    return { promoted: true, candidate: { version, metrics }, serving: { version: serving.version, metrics: servingMetrics }, summary };
  } finally {
    await rm(candidateFile, { recursive: true, force: true });
  }
}

/** The manifest `encoder bootstrap --examples` reads: the pool's LoRAs of one family that came with captions (the
 *  training signal), each with the rest of its text (name, tags, trigger words: what text-only retrieval knows). */
export async function writeBootstrapExamples(index: LoraIndex, store: LoraStore, folder: string, family: string,
  limit = 20_000): Promise<{ path: string; examples: number }> {
  const examples = [];
  for (const lora of await index.list({ family }, limit)) {
    if (lora.captions.length === 0 || !existsSync(store.pathOf(lora.id))) continue;
    // A name an upload took from its file says little; a source's (Civitai, Hugging Face) is the LoRA's title.
    const text = [...(lora.source === "upload" ? [] : [lora.name]), ...lora.tags, ...lora.trigger_words].filter(Boolean);
    examples.push({ lora: store.pathOf(lora.id), captions: lora.captions.slice(0, 20), text });
  }
  const path = join(folder, "bootstrap-examples.json");
  await writeFile(path, JSON.stringify({ examples }));
  return { path, examples: examples.length };
}

export interface BootstrapOptions extends Omit<RetrainOptions, "init" | "metrics" | "evalPairs" | "extras"> {
  /** Writes the training manifest into `folder` (writeBootstrapExamples). */
  examples: (folder: string) => Promise<{ path: string; examples: number }>;
  /** The encoder's size, default the worker's (width 128, 4 probes, depth 2); tests train a smaller one. */
  size?: { width: number; probes: number; depth: number };
}

/**
 * A LoRA encoder for the `flux` family, bootstrapped from the pool: the worker's Python trains one on the pool's
 * captioned LoRAs and judges it on held-out ones against text-only retrieval (`encoder bootstrap`). It is served
 * only if it finds held-out LoRAs better than their text does and, when an encoder is served already, not worse
 * than that one (MRR); then every ready worker reloads it, and the caller re-embeds the pool.
 */
export async function bootstrapFluxEncoder(options: BootstrapOptions, signal?: AbortSignal): Promise<RetrainOutcome> {
  const { registry } = options;
  const work = join(registry.dir, "work");
  await mkdir(work, { recursive: true });
  const candidate = join(work, `candidate-${Date.now()}`);
  try {
    const { path, examples } = await options.examples(work);
    options.log?.(`[retrain] bootstrapping a flux LoRA encoder from ${examples} captioned LoRAs (${options.steps} steps)`);
    const result = await python(options, ["encoder", "bootstrap", "--family", "flux", "--examples", path, "--out", candidate,
      "--steps", String(options.steps), "--seed", String(Date.now() % 100_000),
      ...(options.size ? ["--width", String(options.size.width), "--probes", String(options.size.probes), "--depth", String(options.size.depth)] : [])],
    signal);
    const metrics = Object.fromEntries(Object.entries(result).filter((entry): entry is [string, number] => typeof entry[1] === "number"));
    const version = String(result.version);
    const served = registry.hasServing() ? registry.serving() : undefined;
    const serving = { version: served?.version ?? "none", metrics: served?.metrics ?? {} };
    const comparison = `held-out MRR ${round(metrics.mrr!)} by weights, ${round(metrics.text_only_mrr!)} by text only` +
      (served?.metrics?.mrr !== undefined ? `, ${round(served.metrics.mrr)} by the served ${served.version}` : "");
    const beatsServed = served?.metrics?.mrr === undefined || metrics.mrr! >= served.metrics.mrr;
    if (result.promote !== true || !beatsServed) {
      const why = result.promote !== true ? String(result.reason ?? "not better than text-only retrieval") : `worse than the served ${served!.version}`;
      await registry.addCandidate(candidate, metrics, "refused", why);
      const summary = `kept ${served ? served.version : "text-only retrieval"}: candidate ${version} ${why} (${comparison})`;
      return { promoted: false, candidate: { version, metrics }, serving, summary };
    }
    await registry.addCandidate(candidate, metrics, "retired",
      `bootstrapped from ${String(result.train_loras)} captioned LoRAs, judged on ${String(result.heldout_loras)} held out`);
    await registry.promote(version, `promoted over ${served ? served.version : "text-only retrieval"} (${comparison})`);
    const reloaded = await reloadWorkers(registry, options.workers(), options.log);
    const summary = `promoted ${version} (${comparison}); ${reloaded} worker(s) reloaded`;
    return { promoted: true, candidate: { version, metrics }, serving, summary };
  } finally {
    await rm(candidate, { recursive: true, force: true });
  }
}

/** Tell each worker to load the serving copy; returns how many did. */
export async function reloadWorkers(registry: ModelRegistry, workers: WorkerBackend[], log?: (line: string) => void): Promise<number> {
  let reloaded = 0;
  const kind = registry.kind.name;
  for (const worker of workers) {
    try {
      const version = await (kind === "gates" ? worker.reloadGates(registry.servingPath) : worker.reloadEncoder(registry.servingPath));
      log?.(`[models] worker ${worker.id} now serves ${kind} ${version}`);
      reloaded += 1;
    } catch (error) {
      log?.(`[models] worker ${worker.id} could not reload the ${kind} (it loads it when it restarts): ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  return reloaded;
}

async function evaluate(options: RetrainOptions, file: string, signal?: AbortSignal): Promise<Record<string, number>> {
  const kind = options.registry.kind.name;
  if (kind === "encoder-flux") throw new Error("the flux encoder is judged by its bootstrap");
  const result = await python(options, TRAINING[kind].evaluate(file, options), signal);
  return Object.fromEntries(Object.entries(result).filter((entry): entry is [string, number] => typeof entry[1] === "number"));
}

/** Run `python -m autolora_worker … --json --bundle B`; resolves to its JSON answer, logs its progress. Like a
 *  worker, the trainer gets only the environment it needs and ends with this process (its stdin is our pipe). */
function python(options: RetrainOptions, args: string[], signal?: AbortSignal): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const child = spawn(options.python, ["-m", "autolora_worker", ...args, "--bundle", options.bundleDir, "--json", "--exit-with-stdin"], {
      env: workerEnvironment(process.env, { PYTHONUNBUFFERED: "1" }), stdio: ["pipe", "pipe", "pipe"], signal,
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => { stdout += chunk.toString(); });
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
      for (const line of chunk.toString().split("\n").filter(Boolean)) options.log?.(`[retrain] ${line}`);
    });
    child.on("error", (error) => reject(new Error(`could not run ${options.python} -m autolora_worker ${args[0]} ${args[1]}: ${error.message}`)));
    child.on("close", (code) => {
      if (code !== 0) return reject(new Error(`autolora_worker ${args[0]} ${args[1]} failed (exit ${code}): ${stderr.trim().split("\n").at(-1) ?? ""}`));
      try {
        resolve(JSON.parse(stdout.trim().split("\n").at(-1)!) as Record<string, unknown>);
      } catch {
        reject(new Error(`autolora_worker ${args[0]} ${args[1]} printed no JSON`));
      }
    });
  });
}

function round(value: number): string {
  return Number.isFinite(value) ? value.toFixed(4) : String(value);
}
