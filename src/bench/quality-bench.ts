// `npm run bench -- quality [--json] [--prompts N] [--out DIR]`: the paper's Table 1 through the product.
//
// Held-out object + style prompts (the retrieval bench's test prompts: `world prompts --split heldout --seed 202`,
// phrasings no training caption used) go through the real /imagine pipeline: the host's retrieval over the
// held-out LoRAs (ingested as bundle-pool.ts describes, a third of them without text), the worker's sampling with
// the picks fused, the grid and singles on disk. The worker's /judge route (the proving ground's evaluator) then
// names each image's shape and style. Arms, each on the same prompts and seeds:
// - base: no LoRAs;
// - top-k (paper): the k nearest LoRAs by their weight embedding, fused directly and with the gates;
// - covering (configured): the host's configured selection and hybrid score, fused directly and with the gates.
// Per arm: both-correct (shape and style as asked), attribute accuracy (the mean of the two), how often the picks
// drew both concepts the prompt names, and LoRAs per prompt; intervals are 95% bootstrap over prompts, and the
// differences that matter are paired (same prompt, same seed). Seeds and prompts were fixed before any run.
import { copyFile, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { bundleTexts, cached, ingestSplit, loadPromptSet, withBenchWorld } from "./bundle-pool.js";
import { bootstrapInterval, pooledMean, round3, seededRandom } from "./stats.js";
import { SPLITS } from "./retrieval-bench.js";
import type { Fusion } from "../gpu/protocol.js";
import { GenerationStore } from "../pipeline/generations.js";
import { ImaginePipeline, type ImagineSettings } from "../pipeline/imagine.js";
import { FairQueue } from "../pipeline/queue.js";
import { Retriever, selectionSettings, type SelectionSettings } from "../pipeline/retrieval.js";

/** The sample seeds of every prompt (bench world's; fixed before any result was seen). */
export const QUALITY_SEEDS = [11, 22, 33, 44];
const PAPER: SelectionSettings = { selection: "top-k", hybrid: { textWeight: 0, ratingWeight: 0, ratingPseudoCount: 0 } };

interface Arm { name: string; selection?: "paper" | "configured"; fusion: Fusion }

export const ARMS: Arm[] = [
  { name: "base", fusion: "none" },
  { name: "top-k (paper), direct", selection: "paper", fusion: "direct" },
  { name: "top-k (paper), gated", selection: "paper", fusion: "gated" },
  { name: "covering (configured), direct", selection: "configured", fusion: "direct" },
  { name: "covering (configured), gated", selection: "configured", fusion: "gated" },
];

/** Differences reported paired over the same prompts and seeds: [minuend, subtrahend]. */
const PAIRED: Array<[string, string]> = [
  ["covering (configured), gated", "base"],
  ["covering (configured), gated", "top-k (paper), gated"],
  ["covering (configured), direct", "top-k (paper), direct"],
  ["covering (configured), gated", "covering (configured), direct"],
  ["top-k (paper), gated", "top-k (paper), direct"],
];

export interface ArmScores {
  both_correct: number;
  both_correct_ci: [number, number];
  attribute_acc: number;
  attribute_acc_ci: [number, number];
  shape_acc: number;
  style_acc: number;
  /** Prompts whose picks drew both concepts the prompt names. */
  picks_cover_both: number;
  loras_per_prompt: number;
}

export interface QualityReport {
  prompts: number;
  seeds: number[];
  split: string;
  prompt_seed: number;
  k: number;
  configured: SelectionSettings;
  arms: Record<string, ArmScores>;
  /** Both-correct differences over the same prompts and seeds, with their own bootstrap intervals. */
  paired: Record<string, { both_correct: number; both_correct_ci: [number, number] }>;
  /** Per prompt: the picks of each arm (concepts) and its both-correct, for finding out why an arm wins or loses. */
  detail: Array<{ prompt: string; concepts: string[]; arms: Record<string, { picks: Array<string | null>; both_correct: number }> }>;
  seconds: number;
}

/** One image's verdict against what the prompt asked: [shape right, style right]. */
export function verdict(asked: { shape: string; style: string }, got: { shape: string; style: string }): [boolean, boolean] {
  return [got.shape === asked.shape, got.style === asked.style];
}

/** Per-arm figures from per-prompt, per-image verdicts (groups: prompts). */
export function armScores(verdicts: Array<Array<[boolean, boolean]>>, picks: Array<Array<string | null>>, asked: string[][],
  random: () => number): ArmScores {
  const both = verdicts.map((images) => images.map(([shape, style]) => Number(shape && style)));
  const attribute = verdicts.map((images) => images.map(([shape, style]) => (Number(shape) + Number(style)) / 2));
  const interval = (groups: number[][]) => bootstrapInterval(groups, random).map(round3) as [number, number];
  return {
    both_correct: round3(pooledMean(both)), both_correct_ci: interval(both),
    attribute_acc: round3(pooledMean(attribute)), attribute_acc_ci: interval(attribute),
    shape_acc: round3(pooledMean(verdicts.map((images) => images.map(([shape]) => Number(shape))))),
    style_acc: round3(pooledMean(verdicts.map((images) => images.map(([, style]) => Number(style))))),
    picks_cover_both: round3(pooledMean(picks.map((got, n) => [Number(asked[n]!.every((concept) => got.includes(concept)))]))),
    loras_per_prompt: round3(pooledMean(picks.map((got) => [got.length]))),
  };
}

export async function runQualityBench(options: { prompts?: number; out?: string }, log: (line: string) => void): Promise<QualityReport> {
  const started = performance.now();
  return withBenchWorld("quality", async ({ config, data, python, encoder, workers }) => {
    const { split, seed } = SPLITS.test;
    const set = await loadPromptSet(python, config.bundle_dir, split, seed);
    const prompts = set.pairs.slice(0, options.prompts ?? set.pairs.length);
    const memo = cached(encoder);
    const { index, store, concepts, documented } = await ingestSplit(join(data, "pool"), set, config.bundle_dir,
      bundleTexts(config.bundle_dir), workers.dispatcher, memo);
    log(`[bench] quality: ${set.loras.length} ${split} LoRAs ingested (${documented} with text); ${prompts.length} prompts × ${ARMS.length} arms × ${QUALITY_SEEDS.length} seeds`);
    const generations = await GenerationStore.open(join(data, "lancedb"));
    const retriever = new Retriever(memo, index);
    const configured = selectionSettings(config.retrieval);
    const queue = new FairQueue({ concurrency: 1, perUser: 5, global: 10 });
    const pipelineFor = (selection: SelectionSettings) => {
      const settings: ImagineSettings = {
        k: config.retrieval.k, minSimilarity: config.retrieval.min_similarity, ...selection, fusion: "gated",
        seedsPerPrompt: QUALITY_SEEDS.length, steps: config.generation.steps, filters: {},
      };
      return new ImaginePipeline({ retriever, queue, dispatcher: workers.dispatcher, store, generations, dataDir: data, settings });
    };
    const pipelines = { paper: pipelineFor(PAPER), configured: pipelineFor(configured) };
    const verdicts = new Map(ARMS.map((arm) => [arm.name, [] as Array<Array<[boolean, boolean]>>]));
    const picks = new Map(ARMS.map((arm) => [arm.name, [] as Array<Array<string | null>>]));
    const detail: QualityReport["detail"] = [];
    if (options.out) await mkdir(options.out, { recursive: true });
    for (const [number, { prompt, concepts: asked }] of prompts.entries()) {
      const [shape, style] = asked as [string, string];
      const row: QualityReport["detail"][number] = { prompt, concepts: asked, arms: {} };
      for (const arm of ARMS) {
        const pipeline = pipelines[arm.selection ?? "configured"];
        const { result } = pipeline.imagine(prompt, {
          user: "bench", seeds: QUALITY_SEEDS, fusion: arm.fusion, ...(arm.selection ? {} : { loras: [] }),
        });
        const { files, loras } = await result;
        const pngs = await Promise.all(files.singles.map((file) => readFile(file)));
        const { labels } = await workers.dispatcher.judge(pngs);
        const images = labels.map((label) => verdict({ shape, style }, label));
        const drawn = loras.map((hit) => concepts.get(hit.lora.id) ?? null);
        verdicts.get(arm.name)!.push(images);
        picks.get(arm.name)!.push(drawn);
        row.arms[arm.name] = { picks: drawn, both_correct: images.filter(([a, b]) => a && b).length / images.length };
        if (options.out) await copyFile(files.grid, join(options.out, `${String(number + 1).padStart(2, "0")}-${arm.name.replace(/[^a-z0-9]+/g, "-")}.png`));
      }
      detail.push(row);
      log(`[bench] quality prompt ${number + 1}/${prompts.length}: ${JSON.stringify(prompt)}: ` +
        ARMS.map((arm) => `${arm.name} ${row.arms[arm.name]!.both_correct}`).join(", "));
    }
    const random = seededRandom(7);
    const asked = prompts.map((prompt) => prompt.concepts);
    const arms = Object.fromEntries(ARMS.map((arm) => [arm.name, armScores(verdicts.get(arm.name)!, picks.get(arm.name)!, asked, random)]));
    const bothOf = (name: string) => verdicts.get(name)!.map((images) => images.map(([a, b]) => Number(a && b)));
    const paired = Object.fromEntries(PAIRED.map(([minuend, subtrahend]) => {
      const less = bothOf(subtrahend);
      const differences = bothOf(minuend).map((images, n) => images.map((value, seed) => value - less[n]![seed]!));
      return [`${minuend} − ${subtrahend}`, {
        both_correct: round3(pooledMean(differences)), both_correct_ci: bootstrapInterval(differences, random).map(round3) as [number, number],
      }];
    }));
    const report: QualityReport = {
      prompts: prompts.length, seeds: QUALITY_SEEDS, split, prompt_seed: seed, k: config.retrieval.k, configured, arms, paired, detail,
      seconds: Math.round((performance.now() - started) / 100) / 10,
    };
    if (options.out) await writeFile(join(options.out, "quality.json"), `${JSON.stringify(report, null, 1)}\n`);
    return report;
  });
}

export function qualityMarkdown(report: QualityReport): string {
  const interval = ([low, high]: [number, number]) => `[${low.toFixed(2)}, ${high.toFixed(2)}]`;
  const lines = [
    `${report.prompts} held-out object + style prompts × ${report.seeds.length} seeds through /imagine (k = ${report.k}); ` +
      `${report.seconds} s`, "",
    "| arm | both correct | attribute accuracy | shape | style | picks draw both concepts | LoRAs per prompt |",
    "|---|---|---|---|---|---|---|",
    ...Object.entries(report.arms).map(([name, row]) => `| ${name} | ${row.both_correct.toFixed(3)} ${interval(row.both_correct_ci)} | ` +
      `${row.attribute_acc.toFixed(3)} ${interval(row.attribute_acc_ci)} | ${row.shape_acc.toFixed(3)} | ${row.style_acc.toFixed(3)} | ` +
      `${row.picks_cover_both.toFixed(3)} | ${row.loras_per_prompt.toFixed(2)} |`),
    "", "| paired difference (same prompts and seeds) | both correct |", "|---|---|",
    ...Object.entries(report.paired).map(([name, row]) => `| ${name} | ${row.both_correct >= 0 ? "+" : ""}${row.both_correct.toFixed(3)} ${interval(row.both_correct_ci)} |`),
  ];
  return lines.join("\n");
}
