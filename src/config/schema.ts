// The host's settings: one zod schema, from which the Config type comes. config/default.yaml documents each key
// and holds its default; the schema says what a valid value is.
import { isIP } from "node:net";
import cron from "node-cron";
import { z } from "zod";
import { FUSION_SETTINGS, MAX_LORAS_PER_JOB, MAX_PROMPT_CHARS, MAX_SEEDS_PER_JOB, MAX_STEPS } from "../gpu/protocol.js";

// Schedules and the time zone are checked here, as the scheduler will use them (node-cron's own validation; its
// time zones go through Intl.DateTimeFormat), so a typo stops the host while it reads its config, not once its
// workers and chats are up. "" means no schedule: the job runs only by hand.
const cronSchedule = z.string().superRefine((schedule, context) => {
  if (schedule === "" || cron.validate(schedule)) return;
  const why = cron.validateDetailed(schedule).errors[0]?.message;
  context.addIssue({
    code: "custom",
    message: `${JSON.stringify(schedule)} is not a cron schedule${why ? ` (${why})` : ""}; write minute hour day month weekday, ` +
      `e.g. "0 */6 * * *", or "" for none`,
  });
});

const timeZone = z.string().superRefine((zone, context) => {
  try {
    if (zone !== "") new Intl.DateTimeFormat("en", { timeZone: zone });
  } catch {
    context.addIssue({ code: "custom", message: `${JSON.stringify(zone)} is not an IANA time zone such as Europe/Berlin or UTC; "" is the machine's` });
  }
});

/** "127.0.0.1", "::1", "10.0.0.0/8", "fd00::/8": an address, or a range of them. */
function isAddressOrRange(entry: string): boolean {
  const [address = "", bits, extra] = entry.split("/");
  const family = isIP(address);
  return family !== 0 && extra === undefined && (bits === undefined || (/^\d{1,3}$/.test(bits) && Number(bits) <= (family === 4 ? 32 : 128)));
}

const localWorker = z.strictObject({
  device: z.string().regex(/^(cpu|cuda(:\d+)?|mps)$/, "expected cpu, cuda, cuda:N or mps"),
  model: z.string().min(1),
  /** A FLUX worker's gate file (`gates import`); proving-ground workers serve the promoted gates instead. */
  gates: z.string().min(1).optional(),
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
    pool_server: z.strictObject({
      enabled: z.boolean(),
      host: z.string().min(1),
      port: z.int().min(0).max(65535),
    }),
  }),
  retrieval: z.strictObject({
    k: z.int().min(0).max(MAX_LORAS_PER_JOB, `at most ${MAX_LORAS_PER_JOB}, the LoRAs a worker fuses in one job`),
    min_similarity: z.number().min(-1).max(1),
    nsfw: z.enum(["block", "allow"]),
    selection: z.enum(["covering", "top-k"]),
    covering: z.strictObject({
      max_overlap: z.number().min(-1).max(1),
      min_part_similarity: z.number().min(-1).max(1),
    }),
    hybrid: z.strictObject({
      text_weight: z.number().min(0).max(1),
      rating_weight: z.number().min(0).max(1),
      rating_pseudo_count: z.number().min(0),
    }),
  }),
  generation: z.strictObject({
    seeds_per_prompt: z.int().min(1).max(MAX_SEEDS_PER_JOB, `at most ${MAX_SEEDS_PER_JOB}, the seeds a worker draws in one job`),
    fusion: z.enum(FUSION_SETTINGS),
    steps: z.int().min(0).max(MAX_STEPS, `at most ${MAX_STEPS}, the sampling steps a worker takes in one job`),
  }),
  queue: z.strictObject({
    per_user: z.int().min(1),
    global: z.int().min(1),
    backend: z.enum(["memory", "redis"]),
    redis_url: z.string().regex(/^rediss?:\/\/[^\s:@]*(:\d+)?(\/\d+)?$/,
      "expected redis://host:port or rediss://host:port (TLS), without a password: that comes from AUTOLORA_REDIS_PASSWORD"),
    redis_prefix: z.string().regex(/^[\w.-]+$/, "expected letters, digits, _ . or -"),
  }),
  web: z.strictObject({
    enabled: z.boolean(),
    host: z.string().min(1),
    port: z.int().min(0).max(65535),
    allowed_hosts: z.array(z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]/]+)(:\d{1,5})?$/,
      "expected a host name, optionally with its port, e.g. chat.example.org or chat.example.org:8443")),
    trusted_proxies: z.array(z.string().refine(isAddressOrRange, "expected an address or a CIDR range, e.g. 127.0.0.1 or 10.0.0.0/8")),
    session_idle_minutes: z.number().positive(),
    max_sessions: z.int().min(1),
  }),
  scheduler: z.strictObject({
    crawl: cronSchedule,
    maintenance: cronSchedule,
    timezone: timeZone,
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
      schedule: cronSchedule,
      after_new_loras: z.int().min(0),
      after_new_ratings: z.int().min(0),
      steps: z.int().min(0).max(100_000),
      metrics: z.array(z.enum(["heldout_loss", "both_correct", "shape_acc", "style_acc"])).min(1),
      eval_pairs: z.int().min(1).max(100),
      rated_min_score: z.int().min(1),
      encoder_schedule: cronSchedule,
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
    max_prompt_chars: z.int().min(10).max(MAX_PROMPT_CHARS,
      `at most ${MAX_PROMPT_CHARS}, the longest prompt a worker accepts; a lower value narrows it for chats`),
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
