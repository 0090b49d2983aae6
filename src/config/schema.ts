// The host's settings: one zod schema, from which the Config type comes. config/default.yaml documents each key
// and holds its default; the schema says what a valid value is.
import { z } from "zod";

const FUSIONS = ["none", "direct", "dare", "klora", "gated"] as const;

const localWorker = z.strictObject({
  device: z.string().regex(/^(cpu|cuda(:\d+)?|mps)$/, "expected cpu, cuda, cuda:N or mps"),
  model: z.string().min(1),
});

export const configSchema = z.strictObject({
  data_dir: z.string().min(1),
  lancedb_uri: z.string(),
  bundle_dir: z.string().min(1),
  text_encoder_dir: z.string().min(1),
  seed_pool_from_bundle: z.boolean(),
  workers: z.strictObject({
    local: z.array(localWorker),
    remote: z.array(z.url({ protocol: /^https?$/ })),
    python: z.string(),
    startup_timeout_s: z.number().positive(),
    job_timeout_s: z.number().positive(),
  }),
  retrieval: z.strictObject({
    k: z.int().min(0).max(8),
    min_similarity: z.number().min(-1).max(1),
    nsfw: z.enum(["block", "allow"]),
  }),
  generation: z.strictObject({
    seeds_per_prompt: z.int().min(1).max(16),
    fusion: z.enum(FUSIONS),
    steps: z.int().min(0).max(200),
  }),
  queue: z.strictObject({
    per_user: z.int().min(1),
    global: z.int().min(1),
  }),
  web: z.strictObject({
    enabled: z.boolean(),
    host: z.string().min(1),
    port: z.int().min(0).max(65535),
  }),
  scheduler: z.strictObject({
    crawl: z.string(),
    maintenance: z.string(),
    timezone: z.string(),
    sources: z.array(z.string().regex(/^[a-z][a-z0-9-]*$/, "expected a source name such as civitai, huggingface or local")),
    max_download_mb: z.number().positive(),
    allow_loopback: z.boolean(),
    civitai: z.strictObject({
      base_url: z.url({ protocol: /^https?$/ }),
      base_models: z.array(z.string().min(1)).min(1),
      sort: z.string().min(1),
      page_size: z.int().min(1).max(100),
    }),
    huggingface: z.strictObject({
      base_url: z.url({ protocol: /^https?$/ }),
      base_model: z.string().regex(/^[\w.-]+\/[\w.-]+$/, 'expected "owner/name", e.g. black-forest-labs/FLUX.1-dev'),
      page_size: z.int().min(1).max(1000),
    }),
    local: z.strictObject({ folder: z.string().min(1) }),
    retrain: z.strictObject({
      schedule: z.string(),
      after_new_loras: z.int().min(0),
      after_new_ratings: z.int().min(0),
      steps: z.int().min(0).max(100_000),
      metrics: z.array(z.enum(["heldout_loss", "both_correct", "shape_acc", "style_acc"])).min(1),
      eval_pairs: z.int().min(1).max(100),
      rated_min_score: z.int().min(1),
      encoder_schedule: z.string(),
      encoder_steps: z.int().min(0).max(100_000),
      encoder_metrics: z.array(z.enum(["recall_at_1", "recall_at_3", "mrr"])).min(1),
    }),
  }),
  admins: z.array(z.string().regex(/^[a-z]+:.+$/, 'expected "<adapter>:<user id>" or "<adapter>:role:<role id>", e.g. "discord:80351110224678912"')),
  chat: z.strictObject({
    reactions: z.record(z.string().min(1).max(64), z.int().min(-5).max(5).refine((value) => value !== 0, "a rating cannot be 0"))
      .refine((map) => Object.keys(map).length >= 1 && Object.keys(map).length <= 4, "give 1 to 4 reactions")
      .refine((map) => new Set(Object.values(map)).size === Object.keys(map).length, "each reaction needs its own value"),
    per_minute: z.int().min(0),
    per_day: z.int().min(0),
    max_prompt_chars: z.int().min(10).max(4000),
    progress_interval_ms: z.int().min(0).max(60_000),
    max_lora_mb: z.number().positive(),
  }),
  discord: z.strictObject({
    guild_id: z.string().regex(/^\d*$/, "expected a numeric guild id, or empty for global commands"),
    api_url: z.union([z.literal(""), z.url({ protocol: /^https?$/ })]),
    upload_limit_mb: z.number().positive().max(500),
  }),
  slack: z.strictObject({
    mode: z.enum(["http", "socket"]),
    host: z.string().min(1),
    port: z.int().min(0).max(65535),
    path: z.string().regex(/^\/[\w/-]*$/, "expected a URL path such as /slack/events"),
    api_url: z.union([z.literal(""), z.url({ protocol: /^https?$/ })]),
  }),
  plugins: z.array(z.string().min(1)),
}).refine((config) => config.queue.per_user <= config.queue.global, {
  message: "queue.per_user cannot exceed queue.global",
  path: ["queue", "per_user"],
});

export type Config = z.infer<typeof configSchema>;
