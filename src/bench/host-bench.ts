// `npm run bench -- [--json] [--sizes 1000,100000,1000000] [--runs N] [--baseline DIST]`: the host's own costs,
// measured here; --baseline times another build's retrieval (its compiled dist/ folder) side by side with this one's.
// `npm run bench -- burst [--json] [--requests 200] [--users 20] [--via discord|slack] [--load] [--warmup 20]
// [--queue memory|redis] [--workers 2] [--kill-worker | --kill-host]`: a burst of
// /imagine through the chat adapters against their local fakes, after --warmup /help commands (src/bench/burst.ts).
// `npm run bench -- retrieval [--json]`: which LoRAs retrieval picks on the bundle's pool (src/bench/retrieval-bench.ts).
// `npm run bench -- quality [--json] [--prompts N] [--out DIR]`: Table 1 through /imagine, images judged by the
// proving ground's evaluator (src/bench/quality-bench.ts).
// - retrieval: text encoding + LanceDB search latency (p50/p99) on synthetic pools of each size (an IVF-PQ index
//   from 10 000 LoRAs, as the product builds it);
// - ingest: adding LoRA files (validate, hash, store, embed on a real worker, index) against a plain read of the
//   same files: MB/s on FLUX.1-size files made here, LoRAs/s on the bundle's small ones (in batches, and one at a
//   time as before batches);
// - host overhead per /imagine: total time minus the worker's own sampling time, with the real worker.
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { runBurst, type BurstReport } from "./burst.js";
import { runRestartBurst } from "./burst-restart.js";
import { qualityMarkdown, runQualityBench } from "./quality-bench.js";
import { retrievalMarkdown, runRetrievalBench } from "./retrieval-bench.js";
import { loadConfig } from "../config/load.js";
import type { Config } from "../config/schema.js";
import { pythonWorkerCommand, WorkerSupervisor } from "../gpu/supervisor.js";
import { startWorkers, workerPython } from "../gpu/workers.js";
import { openModels } from "../models/lifecycle.js";
import type { LoraRecord } from "../pool/index.js";
import { ingestLoras, type IngestDependencies, type IngestMetadata } from "../pool/ingest.js";
import { LanceLoraIndex } from "../pool/lancedb-index.js";
import { LoraStore } from "../pool/store.js";
import { GenerationStore } from "../pipeline/generations.js";
import { ImaginePipeline } from "../pipeline/imagine.js";
import { FairQueue } from "../pipeline/queue.js";
import { Retriever, selectionSettings } from "../pipeline/retrieval.js";
import { TextEncoder } from "../pipeline/text-encoder.js";

const ROOT = resolve(import.meta.dirname, "..", "..");
const PROMPTS = ["a red hexagon with stripes", "neon star", "a small dotted heart on a dark background",
  "pixel art crescent", "can you draw me a wavy ring?", "outlined arrow pointing right", "grainy diamond"];

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return Math.round(sorted[Math.min(sorted.length - 1, Math.ceil(p * (sorted.length - 1)))]! * 100) / 100;
}

function randomUnit(dimension: number, next: () => number): number[] {
  const values = Array.from({ length: dimension }, () => next() * 2 - 1);
  const norm = Math.hypot(...values);
  return values.map((value) => value / norm);
}

/** What the retrieval rows need of a build: this one, or another's `dist/` given by --baseline. */
interface RetrievalBuild {
  label: string;
  openIndex(uri: string): Promise<{ append(rows: LoraRecord[]): Promise<void>; maintain(): Promise<string>;
    annStats(): Promise<{ segments?: number } | undefined>; hasAnnIndex: boolean }>;
  retriever(index: unknown): { retrieve(prompt: string, options: { k: number; minSimilarity: number }):
    Promise<{ timings: { encode_ms: number; search_ms: number } }> };
  close(): Promise<void>;
}

function thisBuild(encoder: TextEncoder): RetrievalBuild {
  return {
    label: "this", openIndex: (uri) => LanceLoraIndex.open({ uri }),
    retriever: (index) => new Retriever(encoder, index as LanceLoraIndex), close: async () => undefined,
  };
}

/** Another build's index, retriever and text encoder, from its compiled `dist/` folder (`npm run build` there):
 *  its own code, timed beside this one's on the same rows and prompts. */
async function otherBuild(dist: string, textEncoderDir: string): Promise<RetrievalBuild> {
  const load = async (path: string) => {
    const file = join(resolve(dist), path);
    try {
      return await import(pathToFileURL(file).href);
    } catch (error) {
      throw new Error(`--baseline ${dist}: cannot load ${file} (${(error as Error).message}); give the dist/ folder of a built checkout`);
    }
  };
  const [{ LanceLoraIndex: Index }, { Retriever: OtherRetriever }, { TextEncoder: OtherEncoder }] =
    await Promise.all([load("pool/lancedb-index.js"), load("pipeline/retrieval.js"), load("pipeline/text-encoder.js")]);
  const encoder = await OtherEncoder.load(textEncoderDir);
  return {
    label: "baseline", openIndex: (uri) => Index.open({ uri }),
    retriever: (index) => new OtherRetriever(encoder, index), close: async () => encoder.close?.(),
  };
}

/** The retrieval row of a synthetic pool of `size` LoRAs for each build, every build's pool holding the same rows
 *  and their searches interleaved, so a slow moment of the machine hits all of them alike. */
async function benchRetrieval(builds: RetrievalBuild[], dimension: number, size: number, runs: number, log: (line: string) => void) {
  const folder = await mkdtemp(join(tmpdir(), "autolora-bench-"));
  try {
    const indices = await Promise.all(builds.map((build) => build.openIndex(join(folder, build.label))));
    let seed = 12345;
    const next = () => ((seed = (seed * 48271) % 2147483647) / 2147483647);
    const batch = 50_000;
    for (let start = 0; start < size; start += batch) {
      const rows: LoraRecord[] = [];
      for (let n = start; n < Math.min(size, start + batch); n++) {
        rows.push({
          id: n.toString(16).padStart(64, "0"), name: `synthetic ${n}`, source: "bench", url: "", family: "proving-ground",
          format: "diffusers", ranks: [4], modules: 10, trigger_words: [], tags: [], captions: [], license: "", nsfw: false,
          state: "active", file: "", bytes: 1, vector: randomUnit(dimension, next), encoder_version: "bench",
          added_at: "2026-01-01T00:00:00Z",
        });
      }
      for (const index of indices) await index.append(rows); // one after the other: each build loads as it would alone
      log(`[bench] retrieval pool ${size}: ${Math.min(size, start + batch)} rows loaded`);
    }
    const timed = [];
    for (const [n, build] of builds.entries()) {
      const index = indices[n]!;
      // As a pool is after its scheduled upkeep: loading in batches leaves the ANN index in segments on large pools.
      log(`[bench] retrieval pool ${size}: ${await index.maintain()}`);
      const retriever = build.retriever(index);
      for (const prompt of PROMPTS) await retriever.retrieve(prompt, { k: 3, minSimilarity: -1 }); // warm up
      timed.push({ build, index, retriever, segments: (await index.annStats())?.segments ?? 0,
        totals: [] as number[], encode: [] as number[], search: [] as number[] });
    }
    for (let run = 0; run < runs; run++) {
      for (const side of run % 2 === 0 ? timed : [...timed].reverse()) {
        const { timings } = await side.retriever.retrieve(`${PROMPTS[run % PROMPTS.length]} ${run}`, { k: 3, minSimilarity: -1 });
        side.encode.push(timings.encode_ms);
        side.search.push(timings.search_ms);
        side.totals.push(timings.encode_ms + timings.search_ms);
      }
    }
    return timed.map(({ build, index, segments, totals, encode, search }) => ({
      ...(builds.length > 1 ? { build: build.label } : {}), pool: size, ann_index: index.hasAnnIndex, index_segments: segments,
      p50_ms: percentile(totals, 0.5), p99_ms: percentile(totals, 0.99), encode_p50_ms: percentile(encode, 0.5),
      search_p50_ms: percentile(search, 0.5), search_p99_ms: percentile(search, 0.99),
    }));
  } finally {
    await rm(folder, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      json: { type: "boolean" }, sizes: { type: "string" }, runs: { type: "string" },
      requests: { type: "string" }, users: { type: "string" }, via: { type: "string" },
      prompts: { type: "string" }, out: { type: "string" }, load: { type: "boolean" }, warmup: { type: "string" },
      queue: { type: "string" }, workers: { type: "string" }, baseline: { type: "string" }, "kill-worker": { type: "boolean" }, "kill-host": { type: "boolean" },
    },
  });
  if (positionals[0] === "burst") return burst(values);
  if (positionals[0] === "retrieval") {
    const report = await runRetrievalBench((line) => process.stderr.write(`${line}\n`));
    return void process.stdout.write(`${values.json ? JSON.stringify(report) : retrievalMarkdown(report)}\n`);
  }
  if (positionals[0] === "quality") {
    const prompts = values.prompts === undefined ? undefined : Number(values.prompts);
    if (prompts !== undefined && !(Number.isInteger(prompts) && prompts > 0)) throw new Error("--prompts must be a whole number above 0");
    const report = await runQualityBench({ prompts, out: values.out }, (line) => process.stderr.write(`${line}\n`));
    return void process.stdout.write(`${values.json ? JSON.stringify(report) : qualityMarkdown(report)}\n`);
  }
  if (positionals.length > 0) throw new Error(`unknown benchmark ${positionals[0]}; the named benchmarks are "burst", "retrieval" and "quality"`);
  const sizes = (values.sizes ?? "1000,100000,1000000").split(",").map(Number);
  const runs = Number(values.runs ?? 200);
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const { config, secrets } = loadConfig({ ...process.env, AUTOLORA_SEED_POOL_FROM_BUNDLE: "false" });
  const encoder = await TextEncoder.load(resolve(config.text_encoder_dir));
  const builds = [thisBuild(encoder)];
  if (values.baseline) builds.push(await otherBuild(values.baseline, resolve(config.text_encoder_dir)));

  const retrieval = [];
  try {
    for (const size of sizes) retrieval.push(...await benchRetrieval(builds, encoder.dimension, size, runs, log));
  } finally {
    await Promise.all(builds.map((build) => build.close()));
  }

  const poolDir = join(ROOT, "bundle", "pool");
  const files = readdirSync(poolDir).filter((name) => name.endsWith(".safetensors")).map((name) => join(poolDir, name));
  const data = await mkdtemp(join(tmpdir(), "autolora-bench-data-"));
  const workers = await startWorkers(config, secrets, () => undefined, await openModels(config));
  try {
    const dispatcher = workers.dispatcher;
    // The bundle's small files: in batches (the product), and one at a time with a worker call each (as before).
    const batched = await benchIngest(join(data, "batched"), files, { embed: (path) => dispatcher.embed(path), embedMany: (paths) => dispatcher.embedMany(paths) });
    const single = await benchIngest(join(data, "single"), files, { embed: (path) => dispatcher.embed(path) }, 1);
    log(`[bench] ingest, bundle: ${batched.loras_per_s} LoRAs/s in batches, ${single.loras_per_s} one at a time`);
    const flux = await benchFluxIngest(config, join(data, "flux"), encoder, log);
    const { index, store } = batched;

    const generations = await GenerationStore.open(join(data, "lancedb"));
    const retriever = new Retriever(encoder, index);
    const pipeline = new ImaginePipeline({
      retriever, queue: new FairQueue({ concurrency: 1, perUser: 5, global: 10 }), dispatcher: workers.dispatcher,
      store, generations, dataDir: data,
      settings: { k: config.retrieval.k, minSimilarity: config.retrieval.min_similarity, ...selectionSettings(config.retrieval), fusion: "gated",
        seedsPerPrompt: config.generation.seeds_per_prompt, steps: 0, filters: {} },
    });
    const overheads: number[] = [];
    const imagineRuns = Math.max(5, Math.min(30, Math.round(runs / 10)));
    for (let run = 0; run < imagineRuns + 1; run++) {
      const result = await pipeline.imagine(PROMPTS[run % PROMPTS.length]!, { user: "bench", seed: run }).result;
      if (run > 0) overheads.push(result.generation.timings.total_ms! - result.generation.timings.sampling_ms!);
    }
    const report = {
      retrieval,
      ingest: { mb_per_s: flux.mb_per_s, raw_read_mb_per_s: flux.raw_read_mb_per_s, flux: flux,
        bundle: { ...withoutPool(batched), one_at_a_time: withoutPool(single) } },
      host_overhead_ms: { p50: percentile(overheads, 0.5), p99: percentile(overheads, 0.99), runs: overheads.length },
    };
    if (values.json) {
      process.stdout.write(`${JSON.stringify(report)}\n`);
    } else {
      process.stdout.write("| build | pool | ANN index | p50 ms | p99 ms | encode p50 | search p50 | search p99 |\n|---|---|---|---|---|---|---|---|\n");
      for (const row of retrieval) {
        process.stdout.write(`| ${"build" in row ? row.build : "this"} | ${row.pool} | ${row.ann_index} | ${row.p50_ms} | ${row.p99_ms} | ${row.encode_p50_ms} | ${row.search_p50_ms} | ${row.search_p99_ms} |\n`);
      }
      process.stdout.write(`\ningest, FLUX.1-size LoRAs: ${flux.mb_per_s} MB/s (plain read ${flux.raw_read_mb_per_s} MB/s) over ${flux.files} files of ${flux.megabytes} MB\n`);
      process.stdout.write(`ingest, the bundle's LoRAs: ${batched.loras_per_s} LoRAs/s, ${batched.mb_per_s} MB/s (one at a time: ${single.loras_per_s} LoRAs/s)\n`);
      process.stdout.write(`host overhead per /imagine: p50 ${report.host_overhead_ms.p50} ms, p99 ${report.host_overhead_ms.p99} ms\n`);
    }
  } finally {
    await workers.stop();
    await encoder.close();
    await rm(data, { recursive: true, force: true });
  }
}

interface IngestRun {
  files: number;
  megabytes: number;
  seconds: number;
  loras_per_s: number;
  mb_per_s: number;
  /** MB/s of reading the same files whole, just before (from the page cache after a first read). */
  raw_read_mb_per_s: number;
  index: LanceLoraIndex;
  store: LoraStore;
}

const withoutPool = ({ index: _index, store: _store, ...numbers }: IngestRun) => numbers;

/** Add `files` to a new pool under `folder` through the product's ingest; every file must go in. */
async function benchIngest(folder: string, files: string[], embedding: Pick<IngestDependencies, "embed" | "embedMany" | "embedText">,
  batchSize?: number, metadata: (file: string) => IngestMetadata = () => ({})): Promise<IngestRun> {
  let started = performance.now();
  let bytes = 0;
  for (const file of files) bytes += readFileSync(file).length;
  const rawSeconds = (performance.now() - started) / 1000;
  const store = new LoraStore(join(folder, "pool"));
  const index = await LanceLoraIndex.open({ uri: join(folder, "lancedb") });
  started = performance.now();
  const outcomes = await ingestLoras(files.map((file) => ({ file, metadata: metadata(file) })), { store, index, ...embedding }, { batchSize });
  const seconds = (performance.now() - started) / 1000;
  const failed = outcomes.findIndex((outcome) => outcome instanceof Error);
  if (failed >= 0) throw new Error(`ingest failed for ${files[failed]}: ${(outcomes[failed] as Error).message}`);
  const megabytes = bytes / 1e6;
  const round = (value: number, places: number) => Math.round(value * 10 ** places) / 10 ** places;
  return { files: files.length, megabytes: round(megabytes, 1), seconds: round(seconds, 2), loras_per_s: round(files.length / seconds, 1),
    mb_per_s: round(megabytes / seconds, 1), raw_read_mb_per_s: round(megabytes / rawSeconds, 1), index, store };
}

/** Real-size FLUX.1 LoRA files (made here: 52-209 MB each) through ingest on a FLUX stand-in worker, which reads
 *  and checks each file as a FLUX host's worker does (it has no LoRA encoder, as no FLUX host has one yet, so
 *  each is indexed by its name's text embedding). */
async function benchFluxIngest(config: Config, folder: string, encoder: TextEncoder, log: (line: string) => void) {
  const python = workerPython(config);
  const run = (...args: string[]) => execFileSync(python, ["-m", "autolora_worker", ...args], { stdio: ["ignore", "pipe", "pipe"] });
  log("[bench] ingest: writing FLUX.1-size LoRA files and a FLUX stand-in");
  run("full-size-flux-loras", "--out", join(folder, "files"), "--count", "5");
  run("tiny-flux", "--out", join(folder, "tiny-flux"));
  const files = readdirSync(join(folder, "files")).filter((name) => name.endsWith(".safetensors")).sort().map((name) => join(folder, "files", name));
  const supervisor = new WorkerSupervisor({ workers: [pythonWorkerCommand(python, "cpu", join(folder, "tiny-flux"))], log: () => undefined });
  await supervisor.start(120_000);
  try {
    const worker = supervisor.ready()[0]!;
    // Named as a crawl names them: without an encoder, their text is what they are found by.
    const result = withoutPool(await benchIngest(join(folder, "pool"), files,
      { embed: (path) => worker.embed(path), embedMany: (paths) => worker.embedMany!(paths), embedText: encoder }, undefined,
      (file) => ({ name: basename(file, ".safetensors").replace(/-/g, " ") })));
    log(`[bench] ingest, FLUX.1 size: ${result.files} files, ${result.megabytes} MB in ${result.seconds} s`);
    return result;
  } finally {
    await supervisor.stop();
  }
}

/** Both adapters (or the one --via names), on a quiet machine and, with --load, again beside a CPU-bound process;
 *  the top-level figures are the worst of all runs. */
async function burst(values: { json?: boolean; requests?: string; users?: string; via?: string; load?: boolean; warmup?: string; queue?: string; workers?: string;
  "kill-worker"?: boolean; "kill-host"?: boolean }): Promise<void> {
  const requests = Number(values.requests ?? 200);
  const users = Number(values.users ?? 20);
  const warmup = Number(values.warmup ?? 20);
  if (!(Number.isInteger(warmup) && warmup >= 0)) throw new Error("--warmup must be a whole number of /help commands (0 for none)");
  if (!(Number.isInteger(requests) && requests > 0 && Number.isInteger(users) && users > 0 && users <= requests)) {
    throw new Error("--requests and --users must be whole numbers with 0 < users ≤ requests");
  }
  const vias = values.via ? [values.via] : ["discord", "slack"];
  if (vias.some((via) => via !== "discord" && via !== "slack")) throw new Error("--via must be discord or slack");
  const queue = values.queue ?? "memory";
  if (queue !== "memory" && queue !== "redis") throw new Error("--queue must be memory or redis");
  const workers = Number(values.workers ?? 2);
  if (!(Number.isInteger(workers) && workers >= 1)) throw new Error("--workers must be a whole number of queue workers, at least 1");
  if (values["kill-host"]) {
    // A host in a process of its own, killed a quarter of the way in and started again: through Slack, with Redis.
    if (queue !== "redis" || (values.via && values.via !== "slack")) throw new Error("--kill-host runs with --queue redis, through Slack");
    const report = await runRestartBurst({ requests, users, workers });
    if (values.json) return void process.stdout.write(`${JSON.stringify(report)}\n`);
    return void process.stdout.write(`${Object.entries(report).map(([key, value]) => `${key}: ${String(value)}`).join("\n")}\n`);
  }
  const reports: BurstReport[] = [];
  for (const load of values.load ? [false, true] : [false]) {
    for (const via of vias as Array<"discord" | "slack">) {
      reports.push(await runBurst({ via, requests, users, load, warmup, queue, workers, killWorker: values["kill-worker"] }));
    }
  }
  // The queue's scaling: the same burst through the first adapter with one worker, for jobs per second side by side
  // (not when a worker was killed: those runs ended with one).
  const single = queue === "redis" && !values["kill-worker"] ? await runBurst({ via: vias[0] as "discord" | "slack", requests, users, warmup, queue, workers: 1 }) : undefined;
  const worst = (of: (report: BurstReport) => number) => Math.max(...reports.map(of));
  const summary = {
    requests, users, warmup,
    acked_within_3s: Math.min(...reports.map((report) => report.acked_within_3s)),
    p99_ack_ms: worst((report) => report.p99_ack_ms),
    lost: worst((report) => report.lost),
    users_answered: Math.min(...reports.map((report) => report.users_answered)),
    ...(values["kill-worker"] ? { killed_worker: true } : {}),
    fairness: { max_position_gap: worst((report) => report.fairness.max_position_gap) },
    event_loop_delay_p99_ms: worst((report) => report.event_loop_delay.p99_ms),
    queue,
    ...(single ? { throughput: {
      workers, jobs_per_s: reports.find((report) => report.adapter === single.adapter && !report.load)!.jobs_per_s,
      one_worker_jobs_per_s: single.jobs_per_s,
      ratio: Math.round(reports.find((report) => report.adapter === single.adapter && !report.load)!.jobs_per_s / single.jobs_per_s * 100) / 100,
    } } : {}),
    adapters: Object.fromEntries(reports.filter((report) => !report.load).map(({ adapter, ...rest }) => [adapter, rest])),
    ...(values.load ? { loaded: Object.fromEntries(reports.filter((report) => report.load).map(({ adapter, ...rest }) => [adapter, rest])) } : {}),
  };
  if (values.json) return void process.stdout.write(`${JSON.stringify(summary)}\n`);
  process.stdout.write("| adapter | CPU load beside | requests | users | acked ≤ 3 s | p99 ack ms | event-loop delay p99 / max ms | lost | max position gap | seconds |\n|---|---|---|---|---|---|---|---|---|---|\n");
  for (const report of reports) {
    process.stdout.write(`| ${report.adapter} | ${report.load ? "yes" : "no"} | ${report.requests} | ${report.users} | ${report.acked_within_3s} | ${report.p99_ack_ms} | ${report.event_loop_delay.p99_ms} / ${report.event_loop_delay.max_ms} | ${report.lost} | ${report.fairness.max_position_gap} | ${report.seconds} |\n`);
  }
}

try {
  await main();
} catch (error) {
  // A bad option or a missing build is one line, not a stack trace; exit now, as threads (the text encoder's) may still run.
  process.stderr.write(`error: ${(error as Error).message}\n`);
  process.exit(2);
}
