// /imagine end to end: queue (fair, capped) → retrieve the prompt's LoRAs → generate the seeds on a worker with
// those LoRAs fused → grid, singles and WebP with metadata on disk → a `generations` record.
import { randomInt, randomUUID } from "node:crypto";
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { join, relative } from "node:path";
import {
  MAX_PROMPT_CHARS, MAX_SEED, MAX_SEEDS_PER_JOB, type Fusion, type FusionSetting, type JobProgressEvent,
} from "../gpu/protocol.js";
import type { WorkerDispatcher } from "../gpu/dispatch.js";
import type { LoraFilters, SearchHit } from "../pool/index.js";
import type { LoraStore } from "../pool/store.js";
import type { GenerationRecord, GenerationStore } from "./generations.js";
import { composeImages, MIN_TILE_PX, type GenerationMetadata } from "./images.js";
import type { FairQueue } from "./queue.js";
import type { RetrievedHit, Retriever, SelectionSettings } from "./retrieval.js";

export type { Fusion };

/** A prompt or seeds no worker would take; the message says what to change. */
export class ImagineInputError extends Error {
  override readonly name = "ImagineInputError";
  readonly code = "bad-imagine-input";
}

export interface ImagineSettings extends SelectionSettings {
  k: number;
  minSimilarity: number;
  fusion: FusionSetting;
  seedsPerPrompt: number;
  /** 0: the model family's default. */
  steps: number;
  filters: LoraFilters;
}

export interface ImagineOptions {
  user: string;
  k?: number;
  fusion?: Fusion;
  /** First seed; the others follow it. Default: random. */
  seed?: number;
  /** The seeds themselves (variations); overrides `seed`. */
  seeds?: number[];
  /** Use these LoRAs (ids) instead of retrieving; [] for none. */
  loras?: string[];
  /** Image size in pixels; default the model's. */
  width?: number;
  height?: number;
  signal?: AbortSignal;
  onUpdate?: (update: ImagineUpdate) => void;
  /** The job's id when it is taken up again after a restart (default: a new one): a queue that kept the job
   *  (Redis) hands back its result or its place rather than running it twice. */
  id?: string;
}

export type ImagineUpdate =
  | { type: "queued"; position: number }
  | { type: "started" }
  | { type: "retrieved"; loras: SearchHit[] }
  | { type: "progress"; step: number; total: number; preview?: string }
  | { type: "retry"; message: string };

export interface ImagineResult {
  generation: GenerationRecord;
  /** Absolute paths of the files written. */
  files: { grid: string; gridWebp: string; singles: string[] };
  loras: SearchHit[];
}

export interface ImagineDependencies {
  retriever: Retriever;
  queue: FairQueue;
  dispatcher: Pick<WorkerDispatcher, "generate">;
  store: LoraStore;
  generations: GenerationStore;
  dataDir: string;
  settings: ImagineSettings;
  /** Plugins' post-processors, applied in order to each image before the grid is made. */
  postProcessors?: Array<(image: Buffer, metadata: GenerationMetadata) => Promise<Buffer>>;
}

export class ImaginePipeline {
  constructor(private readonly deps: ImagineDependencies) {}

  /** Queue one /imagine; throws QueueFullError at once when there is no room. */
  imagine(prompt: string, options: ImagineOptions): { id: string; seeds: number[]; result: Promise<ImagineResult>; cancel: () => boolean } {
    const text = prompt.trim();
    if (!text) throw new ImagineInputError("the prompt is empty; say what to draw, e.g. /imagine a red hexagon with stripes");
    if (text.length > MAX_PROMPT_CHARS) throw new ImagineInputError(`the prompt is ${text.length} characters; the limit is ${MAX_PROMPT_CHARS}`);
    const settings = this.deps.settings;
    const count = settings.seedsPerPrompt;
    const first = options.seed ?? randomInt(0, 2 ** 32);
    const seeds = options.seeds ?? Array.from({ length: count }, (_, index) => first + index);
    if (seeds.length < 1 || seeds.length > MAX_SEEDS_PER_JOB || seeds.some((seed) => !Number.isInteger(seed) || seed < 0 || seed > MAX_SEED)) {
      throw new ImagineInputError(`a job draws 1 to ${MAX_SEEDS_PER_JOB} seeds, each a whole number from 0 to ${MAX_SEED}`);
    }
    if (options.id !== undefined && !/^[\w-]{1,64}$/.test(options.id)) throw new ImagineInputError(`not a job id: ${JSON.stringify(options.id)}`);
    const id = options.id ?? randomUUID();
    const queuedAt = performance.now();
    const job = this.deps.queue.enqueue({
      user: options.user, signal: options.signal,
      onPosition: (position) => options.onUpdate?.(position === 0 ? { type: "started" } : { type: "queued", position }),
      run: (signal) => this.run(id, text, seeds, options, signal, queuedAt),
    });
    return { id, seeds, result: job.result, cancel: job.cancel };
  }

  private async run(id: string, prompt: string, seeds: number[], options: ImagineOptions, signal: AbortSignal,
    queuedAt: number): Promise<ImagineResult> {
    const settings = this.deps.settings;
    const started = performance.now();
    const { hits, timings } = options.loras
      ? await this.deps.retriever.score(prompt, options.loras, settings.hybrid)
      : await this.deps.retriever.retrieve(prompt, {
        k: options.k ?? settings.k, minSimilarity: settings.minSimilarity, filters: settings.filters,
        selection: settings.selection, covering: settings.covering, hybrid: settings.hybrid,
      });
    options.onUpdate?.({ type: "retrieved", loras: hits });
    // `auto` asks for the gates; a worker without trained gates fuses directly and says so (`fusion_note`).
    const asked = options.fusion ?? settings.fusion;
    const fusion: Fusion = asked === "auto" ? "gated" : asked;
    const workerStarted = performance.now();
    const end = await this.deps.dispatcher.generate({
      job_id: id, prompt, seeds, ...(settings.steps > 0 ? { steps: settings.steps } : {}),
      ...(options.width ? { width: options.width } : {}), ...(options.height ? { height: options.height } : {}),
      loras: hits.map((hit) => ({ path: this.deps.store.pathOf(hit.lora.id), sha256: hit.lora.id, name: hit.lora.name })),
      fusion: hits.length > 0 ? fusion : "none", preview_every: 4,
    }, {
      signal, user: options.user,
      // Where the dispatcher keeps its own line (Redis), the job waits there after its LoRAs are chosen.
      onPosition: (position) => options.onUpdate?.(position === 0 ? { type: "retrieved", loras: hits } : { type: "queued", position }),
      onRetry: (_worker, error) => options.onUpdate?.({
        type: "retry", message: `the GPU worker stopped mid-job (${error.message}); starting again from the first step`,
      }),
      onEvent: (event) => {
        if (event.type !== "job-progress") return;
        const progress = event as JobProgressEvent;
        options.onUpdate?.({ type: "progress", step: progress.step, total: progress.total, preview: progress.preview?.png_base64 });
      },
    });
    const workerMs = performance.now() - workerStarted;
    const composeStarted = performance.now();
    const loras = hits.map((hit: RetrievedHit) => ({
      id: hit.lora.id, name: hit.lora.name, similarity: hit.similarity, scale: 1, ...(hit.covers ? { covers: hit.covers.part } : {}),
      ...(hit.parts ? { parts: hit.parts } : {}),
    }));
    const metadata: GenerationMetadata = {
      prompt, seeds, loras, fusion: end.fusion, ...(end.fusion_note ? { fusion_note: end.fusion_note } : {}),
      model_version: end.model_version, gate_version: end.gate_version,
    };
    let pngs: Buffer[] = end.images.map((image) => Buffer.from(image.png_base64, "base64"));
    for (const process of this.deps.postProcessors ?? []) pngs = await Promise.all(pngs.map((png) => process(png, metadata)));
    const images = await composeImages(pngs, metadata, MIN_TILE_PX);
    const folder = join(this.deps.dataDir, "generations", id);
    const partial = `${folder}.partial`;
    await mkdir(partial, { recursive: true });
    await writeFile(join(partial, "grid.png"), images.grid);
    await writeFile(join(partial, "grid.webp"), images.gridWebp);
    await Promise.all(images.singles.map((png, index) => writeFile(join(partial, `${index + 1}.png`), png)));
    // A job taken up again after a crash may find its own earlier folder (written, never recorded).
    await rm(folder, { recursive: true, force: true });
    await rename(partial, folder);
    const composeMs = performance.now() - composeStarted;
    const generation: GenerationRecord = {
      id, user: options.user, prompt, seeds, loras, fusion: end.fusion,
      ...(end.fusion_note ? { fusion_note: end.fusion_note } : {}), model_version: end.model_version,
      gate_version: end.gate_version, images: relative(this.deps.dataDir, folder),
      timings: {
        queue_ms: started - queuedAt, encode_ms: timings.encode_ms, search_ms: timings.search_ms, worker_ms: workerMs,
        sampling_ms: end.timings.sampling_ms, compose_ms: composeMs, total_ms: performance.now() - queuedAt,
      },
      ...(options.width && options.height ? { width: options.width, height: options.height } : {}),
      created_at: new Date().toISOString(),
    };
    await this.deps.generations.add(generation);
    return {
      generation, loras: hits,
      files: {
        grid: join(folder, "grid.png"), gridWebp: join(folder, "grid.webp"),
        singles: images.singles.map((_, index) => join(folder, `${index + 1}.png`)),
      },
    };
  }
}
