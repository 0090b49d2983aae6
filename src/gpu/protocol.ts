// The contract between the host and the Python worker (src/gpu/worker/): the NDJSON events streamed by
// `POST /generate` and the body of `GET /health`. Change it only together with the worker's side.
import { z } from "zod";

// Unknown extra fields are accepted and dropped (zod's default), so a worker may add fields before the host
// reads them; missing or mistyped fields are errors.

const imageSchema = z.object({
  png_base64: z.string(),
  width: z.int(),
  height: z.int(),
});

export const jobStartEventSchema = z.object({
  type: z.literal("job-start"),
  job_id: z.string(),
  seeds: z.array(z.int()),
  steps: z.int(),
});

export const jobProgressEventSchema = z.object({
  type: z.literal("job-progress"),
  job_id: z.string(),
  step: z.int().min(1),
  total: z.int().min(1),
  /** A low-resolution decode of the current latents; the worker sends it only on some steps. */
  preview: imageSchema.optional(),
});

export const loraUsedSchema = z.object({
  sha256: z.string(),
  name: z.string(),
  format: z.string(),
  scale: z.number(),
});

export const jobEndEventSchema = z.object({
  type: z.literal("job-end"),
  job_id: z.string(),
  images: z.array(imageSchema.extend({ seed: z.int() })),
  /** The fusion actually used: `gated` on a worker with no trained gates comes back as `direct`, with a note. */
  fusion: z.string(),
  /** Why the fusion differs from the one asked for. Older workers do not say. */
  fusion_note: z.string().optional(),
  loras: z.array(loraUsedSchema),
  model_version: z.string(),
  /** null when the fusion strategy has no trained gates (none, direct, dare, klora). */
  gate_version: z.string().nullable(),
  timings: z.object({
    total_ms: z.number(),
    sampling_ms: z.number(),
  }),
});

export const jobErrorEventSchema = z.object({
  type: z.literal("job-error"),
  job_id: z.string(),
  code: z.string(),
  message: z.string(),
});

export const workerEventSchema = z.discriminatedUnion("type", [
  jobStartEventSchema,
  jobProgressEventSchema,
  jobEndEventSchema,
  jobErrorEventSchema,
]);

export type JobStartEvent = z.infer<typeof jobStartEventSchema>;
export type JobProgressEvent = z.infer<typeof jobProgressEventSchema>;
export type JobEndEvent = z.infer<typeof jobEndEventSchema>;
export type JobErrorEvent = z.infer<typeof jobErrorEventSchema>;
export type WorkerEvent = z.infer<typeof workerEventSchema>;

export const workerHealthSchema = z.object({
  status: z.literal("ok"),
  family: z.string(),
  device: z.string(),
  model_version: z.string(),
  gate_version: z.string().nullable(),
  /** The LoRA encoder /embed uses; null when the worker has none. Older workers do not say. */
  encoder_version: z.string().nullable().optional(),
  /** Whether the worker scores images on /judge (proving ground with its evaluator). Older workers do not say. */
  judge: z.boolean().optional(),
  cached_loras: z.array(
    z.object({
      sha256: z.string(),
      name: z.string(),
      bytes: z.int(),
    }),
  ),
  busy: z.boolean(),
});

export type WorkerHealth = z.infer<typeof workerHealthSchema>;

// What a worker accepts, written once for the host: the config, the chats, the command line and the pipeline
// import these. The worker's own copy is autolora_worker/protocol.py; test/limits.test.ts checks that they agree.

/** The largest seed the worker accepts: JavaScript numbers carry integers exactly only up to 2^53 - 1. */
export const MAX_SEED = Number.MAX_SAFE_INTEGER;
/** The longest prompt, in characters. */
export const MAX_PROMPT_CHARS = 4000;
/** Images (one per seed) in one job. */
export const MAX_SEEDS_PER_JOB = 8;
/** LoRAs fused in one job. */
export const MAX_LORAS_PER_JOB = 8;
/** Sampling steps of one job. */
export const MAX_STEPS = 200;
/** Image width and height in pixels. */
export const MIN_SIZE = 16;
export const MAX_SIZE = 2048;
/**
 * Sizes the chats offer are multiples of this: every family's pixels per token divides it (FLUX's 16, the proving
 * ground's 8), so one size works whichever model a worker hosts. Host-side only; the worker checks its own model.
 */
export const SIZE_MULTIPLE = 16;
/** Images one `POST /judge` scores (autolora_worker/protocol.py MAX_JUDGE_IMAGES). */
export const MAX_JUDGE_IMAGES = 32;
/** Files one `POST /embed` reads (autolora_worker/protocol.py MAX_EMBED_PATHS). */
export const MAX_EMBED_PATHS = 256;

/** Fusion strategies, by the names the worker gives them (autolora_worker/fusion/strategies.py). */
export const FUSIONS = ["none", "direct", "dare", "klora", "gated"] as const;
export type Fusion = (typeof FUSIONS)[number];
/** What the config may name: a strategy, or `auto` (gated, which a worker without trained gates fuses directly). */
export const FUSION_SETTINGS = [...FUSIONS, "auto"] as const;
export type FusionSetting = (typeof FUSION_SETTINGS)[number];

/** `POST /generate`'s body, with the worker's own limits (autolora_worker/protocol.py GenerateRequest). */
export const generateRequestSchema = z.strictObject({
  job_id: z.string().min(1).max(100),
  prompt: z.string().min(1).max(MAX_PROMPT_CHARS),
  seeds: z.array(z.int().min(0).max(MAX_SEED)).min(1).max(MAX_SEEDS_PER_JOB),
  steps: z.int().min(1).max(MAX_STEPS).optional(),
  guidance: z.number().min(0).max(30).optional(),
  height: z.int().min(MIN_SIZE).max(MAX_SIZE).optional(),
  width: z.int().min(MIN_SIZE).max(MAX_SIZE).optional(),
  loras: z.array(z.strictObject({
    /** A file the worker can read (a local worker, or a shared disk). */
    path: z.string().min(1).optional(),
    /** The file's sha256: a worker with pools (`serve --pool-url`) fetches it from the host by this. */
    sha256: z.string().regex(/^[0-9a-f]{64}$/).optional(),
    scale: z.number().min(-4).max(4).optional(),
    name: z.string().max(200).optional(),
  }).refine((lora) => lora.path !== undefined || lora.sha256 !== undefined, "name each LoRA by path, sha256, or both"))
    .max(MAX_LORAS_PER_JOB).optional(),
  fusion: z.enum(FUSIONS).optional(),
  global_lora: z.boolean().optional(),
  preview_every: z.int().min(0).max(MAX_STEPS).optional(),
  preview_size: z.int().min(16).max(256).optional(),
});

export type GenerateRequest = z.infer<typeof generateRequestSchema>;

/** Why a worker line was rejected: it was not JSON, or it was JSON that is not a known event. */
export type WorkerProtocolErrorReason = "invalid-json" | "invalid-event";

/** The worker sent something that breaks this contract; a worker/host version mismatch or a worker bug. */
export class WorkerProtocolError extends Error {
  readonly code = "worker-protocol" as const;
  override readonly name = "WorkerProtocolError";

  constructor(
    readonly reason: WorkerProtocolErrorReason,
    /** 1-based line number in the NDJSON stream. */
    readonly lineNumber: number,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`worker event line ${lineNumber}: ${detail}`, options);
  }
}

const maxQuotedChars = 120;

function quote(line: string): string {
  return line.length > maxQuotedChars ? `${JSON.stringify(line.slice(0, maxQuotedChars))}...` : JSON.stringify(line);
}

/** Parses and validates one NDJSON line; `lineNumber` (1-based) only labels errors. */
export function parseWorkerEvent(line: string, lineNumber: number): WorkerEvent {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    throw new WorkerProtocolError("invalid-json", lineNumber, `not JSON (${detail}): ${quote(line)}`, {
      cause: error,
    });
  }
  const result = workerEventSchema.safeParse(value);
  if (!result.success) {
    const issues = result.error.issues
      .map((issue) => `${issue.path.length > 0 ? issue.path.join(".") : "(root)"}: ${issue.message}`)
      .join("; ");
    throw new WorkerProtocolError("invalid-event", lineNumber, `not a valid worker event: ${issues}`, {
      cause: result.error,
    });
  }
  return result.data;
}

// Blank lines (including a trailing newline's empty remainder) carry no event; "\r\n" endings are tolerated.
function* eventsFromLines(lines: Iterable<string>, firstLineNumber: number): Generator<WorkerEvent> {
  let lineNumber = firstLineNumber;
  for (const rawLine of lines) {
    const line = rawLine.endsWith("\r") ? rawLine.slice(0, -1) : rawLine;
    if (line.trim() !== "") yield parseWorkerEvent(line, lineNumber);
    lineNumber += 1;
  }
}

/** Parses a whole NDJSON body; throws WorkerProtocolError at the first bad line. */
export function parseWorkerEvents(text: string): WorkerEvent[] {
  return [...eventsFromLines(text.split("\n"), 1)];
}

/**
 * Yields each event of an NDJSON byte stream as soon as its line is complete. Lines may be split across chunks
 * (and UTF-8 characters across chunk boundaries); a final line without a newline is still read. Stopping early
 * (break/return) cancels the stream, which is how the host abandons a job's response.
 */
export async function* readWorkerEvents(stream: ReadableStream<Uint8Array>): AsyncGenerator<WorkerEvent> {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  let nextLineNumber = 1;
  let finished = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      pending += decoder.decode(value, { stream: true });
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      yield* eventsFromLines(lines, nextLineNumber);
      nextLineNumber += lines.length;
    }
    pending += decoder.decode();
    yield* eventsFromLines([pending], nextLineNumber);
    finished = true;
  } finally {
    // Cancelling an already failed stream rejects with the failure we are propagating; keep that one.
    if (!finished) await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}

/** `POST /embed`'s answer: what the worker read from a LoRA file, and its LoRA-encoder embedding. */
export const embedResultSchema = z.object({
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  format: z.string(),
  family: z.string().nullable(),
  modules: z.int().min(1),
  ranks: z.array(z.int().min(1)),
  unknown_keys: z.array(z.string()),
  /** Null when the worker has no LoRA encoder for its family: `no_embedding` says why, and the host indexes the
   *  LoRA by its text until an encoder exists. */
  embedding: z.array(z.number()).min(1).nullable(),
  dim: z.int().min(1).nullable(),
  encoder_version: z.string().nullable(),
  no_embedding: z.string().optional(),
});

export type EmbedResult = z.infer<typeof embedResultSchema>;

/** `POST /embed` with `paths`: each file's answer, or why that file cannot be used, in the order asked. */
export const embedManyResultSchema = z.object({
  results: z.array(z.union([embedResultSchema, z.object({ error: z.object({ code: z.string(), message: z.string() }) })])),
});

/** `POST /judge`'s body: base64 PNGs for the proving ground's image evaluator (benchmarks only). */
export const judgeRequestSchema = z.strictObject({
  images: z.array(z.string()).min(1).max(MAX_JUDGE_IMAGES),
});

/** `POST /judge`'s answer: the evaluator's labels for each image, in the order sent. */
export const judgeResultSchema = z.object({
  labels: z.array(z.object({ shape: z.string(), style: z.string(), colour: z.string() })),
  evaluator: z.string(),
});

export type JudgeResult = z.infer<typeof judgeResultSchema>;
