// The burst: many /imagine at once from many users, sent through the real Discord or Slack adapter to its local
// fake (discord.js over the fake gateway, Bolt over signed HTTP), with the protocol-fake worker behind the real
// queue and pipeline. Measures how fast each request was acknowledged, whether every one got its grid, and how
// fairly the queue took turns.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { DiscordAdapter } from "../bots/discord/adapter.js";
import { SlackAdapter } from "../bots/slack/adapter.js";
import { fakeHost } from "../testing/fake-host.js";
import { startFakeDiscord } from "../testing/fake-discord.js";
import { DEFAULT_CHANNEL, startFakeSlack } from "../testing/fake-slack.js";
import { startRedis, type TestRedis } from "../testing/redis.js";

const ROOT = join(import.meta.dirname, "..", "..");

export interface BurstOptions {
  via: "discord" | "slack";
  requests: number;
  users: number;
  /** The fake worker's time per sampling step (20 steps a job). Default 2 ms; 25 ms with Redis, so that workers, not
   *  the host, bound the throughput that the queue's scaling is measured by. */
  stepMs?: number;
  /** How long to wait for every grid. Default 180 s. */
  timeoutMs?: number;
  /** Start a CPU-bound process beside the host for the burst's duration: a machine whose cores other work uses. */
  load?: boolean;
  /**
   * /help commands answered through the same adapter before the burst, as a bot that has been up a while has
   * answered some (its code compiled by V8's JIT). Default 20; 0 measures a host whose first commands are the burst.
   */
  warmup?: number;
  /** queue.backend: memory (default), or redis: a redis-server of the bench's own, with `workers` queue workers. */
  queue?: "memory" | "redis";
  /** Queue workers pulling from Redis (the protocol fake, test/fixtures/fake-queue-worker.mjs). Default 2. */
  workers?: number;
  /** Redis with two or more workers: kill one (SIGKILL) once a quarter of the grids are out, mid-job. */
  killWorker?: boolean;
}

export interface BurstReport {
  adapter: string;
  requests: number;
  users: number;
  acked_within_3s: number;
  p99_ack_ms: number;
  /** Requests that were never acknowledged or never got their grid. */
  lost: number;
  /** Users all of whose requests got their grid. */
  users_answered: number;
  /** When a queue worker was killed (BurstOptions.killWorker), seconds after the burst began. */
  killed_worker_at_s?: number;
  /** The host's event-loop delay while the burst ran (perf_hooks.monitorEventLoopDelay, 10 ms resolution). */
  event_loop_delay: { p99_ms: number; max_ms: number };
  /** Whether a CPU-bound process ran beside the host. */
  load: boolean;
  /** /help commands answered before the burst (BurstOptions.warmup). */
  warmup: number;
  fairness: {
    /**
     * The most jobs started between two consecutive jobs of one user while both were waiting. With perfect turn
     * taking it is users - 1, however many jobs each user queued.
     */
    max_position_gap: number;
  };
  seconds: number;
  /** Grids finished per second, from the first request to the last grid. */
  jobs_per_s: number;
  queue: "memory" | "redis";
  /** Queue workers (redis only). */
  workers?: number;
  /** The fake worker's time per step. */
  step_ms: number;
}

const ACK_WINDOW_MS = 3000;

export async function runBurst(options: BurstOptions): Promise<BurstReport> {
  const perUser = Math.ceil(options.requests / options.users);
  const stepMs = options.stepMs ?? (options.queue === "redis" ? 25 : 2);
  const redis = options.queue === "redis" ? await startRedis() : undefined;
  if (options.killWorker && !(redis && (options.workers ?? 2) >= 2)) throw new Error("--kill-worker needs --queue redis and at least 2 --workers");
  const prefix = `burst-${process.pid}`;
  const queueWorkers = redis ? await Promise.all(Array.from({ length: options.workers ?? 2 }, () => startFakeQueueWorker(redis, prefix, stepMs))) : [];
  const host = await fakeHost({
    stepMs, queue: { perUser, global: options.requests, ...(redis ? { redis: { port: redis.port, password: redis.password, prefix } } : {}) },
    chat: { perMinute: 0, perDay: 0, progressIntervalMs: 1000 },
  }).catch(async (error: unknown) => {
    for (const worker of queueWorkers) worker.kill();
    await redis?.stop();
    throw error;
  });
  // Watch the queue through the pipeline: when each user's job was queued and when it started.
  const jobs: Array<{ user: string; queuedAt: number; startedAt?: number }> = [];
  const imagine = host.context.pipeline.imagine.bind(host.context.pipeline);
  host.context.pipeline.imagine = (prompt, imagineOptions) => {
    const job: (typeof jobs)[number] = { user: imagineOptions.user, queuedAt: performance.now() };
    jobs.push(job);
    return imagine(prompt, {
      ...imagineOptions,
      onUpdate: (update) => {
        // When a worker took it: the host's own start (memory), or the first step a queue worker reports (redis).
        if (update.type === (redis ? "progress" : "started")) job.startedAt ??= performance.now();
        imagineOptions.onUpdate?.(update);
      },
    });
  };
  const warmup = options.warmup ?? 20;
  let load: ReturnType<typeof startCpuLoad> | undefined;
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  let started = performance.now();
  /** Once the warm-up is answered: the CPU load, the event-loop monitor and the clock start with the burst. */
  const begin = () => {
    load = options.load ? startCpuLoad() : undefined;
    loopDelay.enable();
    started = performance.now();
  };
  const userOf = (index: number) => Math.floor(index / perUser); // user-major: each user fires all theirs at once
  // Which requests got their grid, by the prompt its message shows ("request 12").
  const done = new Set<number>();
  const answered = (texts: string[]) => {
    for (const text of texts) {
      const index = /request (\d+)\b/.exec(text)?.[1];
      if (index !== undefined) done.add(Number(index));
    }
    return done.size;
  };
  let killedAt: number | undefined;
  const killing = (count: number) => {
    if (!options.killWorker || killedAt !== undefined || count < options.requests / 4) return;
    killedAt = performance.now();
    queueWorkers[0]!.kill("SIGKILL");
  };
  let acks: number[] = [];
  let finished = 0;
  let lastGridAt = 0;
  try {
    const deadline = Date.now() + (options.timeoutMs ?? 180_000);
    if (options.via === "discord") {
      const fake = await startFakeDiscord();
      const adapter = new DiscordAdapter({ token: "burst-token", core: host.core, stateDir: host.data, apiUrl: fake.apiUrl, guildId: fake.guildId });
      try {
        await adapter.start();
        await Promise.all(Array.from({ length: warmup }, async (_, index) => {
          const { token } = fake.slashCommand({ name: "help", userId: String(200000000000000000n + BigInt(index)) });
          await fake.waitForRequest((request) => request.method === "PATCH" && request.path.includes(`/${token}/messages/@original`), 30_000);
        }));
        begin();
        const sent = Array.from({ length: options.requests }, (_, index) => {
          const at = performance.now();
          const { id, token } = fake.slashCommand({
            name: "imagine", userId: String(100000000000000000n + BigInt(userOf(index))),
            options: [{ name: "prompt", type: 3, value: `a red hexagon, request ${index}` }],
          });
          return { at, path: `/interactions/${id}/${token}/callback` };
        });
        acks = await Promise.all(sent.map(async ({ at, path }) => {
          const callback = await fake.waitForRequest((request) => request.path === path, 60_000).catch(() => undefined);
          return callback ? callback.at - at : Infinity;
        }));
        finished = await settled(() => answered([...fake.messages.values()].filter((message) => JSON.stringify(message.components).includes("autolora:upscale"))
          .map((message) => message.content ?? "")), options.requests, deadline, killing);
        lastGridAt = performance.now();
      } finally {
        await adapter.stop();
        await fake.close();
      }
    } else {
      const signingSecret = "burst-signing-secret";
      const fake = await startFakeSlack({ signingSecret, botToken: "xoxb-burst" });
      const adapter = new SlackAdapter({
        core: host.core, botToken: "xoxb-burst", mode: "http", signingSecret, host: "127.0.0.1", port: 0, apiUrl: fake.apiUrl, retries: 0,
      });
      try {
        const { url } = await adapter.start();
        await Promise.all(Array.from({ length: warmup }, async (_, index) => {
          const { responseUrl } = await fake.slashCommand(url!, { command: "/help", text: "", userId: `W${String(index).padStart(8, "0")}`, channelId: DEFAULT_CHANNEL.id });
          await fake.waitForResponse((response) => response.url === responseUrl, 30_000);
        }));
        begin();
        const answers = await Promise.all(Array.from({ length: options.requests }, (_, index) => fake.slashCommand(url!, {
          command: "/imagine", text: `a red hexagon, request ${index}`, userId: `U${String(userOf(index)).padStart(8, "0")}`, channelId: DEFAULT_CHANNEL.id,
        }).catch(() => undefined)));
        acks = answers.map((answer) => answer?.status === 200 ? answer.ms : Infinity);
        finished = await settled(() => answered([...fake.messages.values()].filter((message) => !message.deleted && JSON.stringify(message.blocks).includes("autolora:upscale"))
          .map((message) => message.text)), options.requests, deadline, killing);
        lastGridAt = performance.now();
      } finally {
        await adapter.stop();
        await fake.close();
      }
    }
    await host.queue.idle();
  } finally {
    loopDelay.disable();
    load?.kill();
    await host.stop();
    for (const worker of queueWorkers) worker.kill();
    await redis?.stop();
  }
  const sorted = [...acks].sort((a, b) => a - b);
  const acked = acks.filter((ms) => ms <= ACK_WINDOW_MS).length;
  return {
    adapter: options.via, requests: options.requests, users: options.users, acked_within_3s: acked,
    p99_ack_ms: round(sorted[Math.min(sorted.length - 1, Math.ceil(sorted.length * 0.99) - 1)] ?? Infinity),
    lost: options.requests - Math.min(finished, acks.filter(Number.isFinite).length),
    users_answered: Array.from({ length: options.users }, (_, user) => user)
      .filter((user) => Array.from({ length: options.requests }, (_, index) => index).every((index) => userOf(index) !== user || done.has(index))).length,
    ...(killedAt !== undefined ? { killed_worker_at_s: round((killedAt - started) / 1000) } : {}),
    event_loop_delay: { p99_ms: round(loopDelay.percentile(99) / 1e6), max_ms: round(loopDelay.max / 1e6) },
    load: Boolean(options.load), warmup,
    fairness: { max_position_gap: maxPositionGap(jobs) },
    seconds: round((performance.now() - started) / 1000),
    jobs_per_s: round(finished / Math.max(1e-3, (lastGridAt - started) / 1000)),
    queue: options.queue ?? "memory", ...(redis ? { workers: queueWorkers.length } : {}), step_ms: stepMs,
  };
}

/** One protocol-fake queue worker, ready to take jobs; it exits when the bench does (its stdin is our pipe). */
export async function startFakeQueueWorker(redis: TestRedis, prefix: string, stepMs: number) {
  const child = spawn(process.execPath, [join(ROOT, "test", "fixtures", "fake-queue-worker.mjs")], {
    stdio: ["pipe", "pipe", "inherit"],
    env: { ...process.env, FAKE_QUEUE_URL: redis.url, FAKE_QUEUE_PREFIX: prefix, FAKE_STEP_MS: String(stepMs) },
  });
  const [line] = await once(createInterface({ input: child.stdout! }), "line") as [string];
  if (!line.includes("listening")) throw new Error(`the fake queue worker did not start: ${line}`);
  return child;
}

/** A process that keeps one core busy until killed (it also dies with the bench: its stdin is our pipe). */
function startCpuLoad() {
  const child = spawn(process.execPath, ["-e", "process.stdin.on('end', () => process.exit()); process.stdin.resume(); setImmediate(function spin() { const end = Date.now() + 50; while (Date.now() < end); setImmediate(spin); });"], {
    stdio: ["pipe", "ignore", "ignore"],
  });
  return child;
}

/** Poll `count` until it reaches `target` or the deadline passes; its last value. `onCount` sees each value. */
export async function settled(count: () => number, target: number, deadline: number, onCount?: (count: number) => void): Promise<number> {
  let value = count();
  while (value < target && Date.now() < deadline) {
    onCount?.(value);
    await new Promise((resolve) => setTimeout(resolve, 100));
    value = count();
  }
  return value;
}

/** See BurstReport.fairness. */
export function maxPositionGap(jobs: Array<{ user: string; queuedAt: number; startedAt?: number }>): number {
  const order = jobs.filter((job) => job.startedAt !== undefined).sort((a, b) => a.startedAt! - b.startedAt!);
  const position = new Map(order.map((job, index) => [job, index]));
  let gap = 0;
  const byUser = new Map<string, typeof order>();
  for (const job of order) byUser.set(job.user, [...(byUser.get(job.user) ?? []), job]);
  for (const own of byUser.values()) {
    for (let i = 1; i < own.length; i++) {
      // Only while the next job was already waiting when the previous one started: otherwise its user had nothing queued.
      if (own[i]!.queuedAt <= own[i - 1]!.startedAt!) gap = Math.max(gap, position.get(own[i]!)! - position.get(own[i - 1]!)! - 1);
    }
  }
  return gap;
}

function round(value: number): number {
  return Number.isFinite(value) ? Math.round(value * 10) / 10 : value;
}
