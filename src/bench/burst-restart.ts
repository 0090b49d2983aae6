// The burst with a host killed in the middle: /imagine from many users through the Slack adapter of a host running
// as `autolora serve` in a process of its own (queue.backend redis, protocol-fake queue workers), `kill -9` once a
// quarter of the grids are out, then started again on the same data folder. Measures whether every accepted job
// was answered, how many grids were posted twice, and how long the host was away.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { DEFAULT_CHANNEL, startFakeSlack } from "../testing/fake-slack.js";
import { freePort } from "../testing/free-port.js";
import { startRedis } from "../testing/redis.js";
import { settled, startFakeQueueWorker } from "./burst.js";

const ROOT = join(import.meta.dirname, "..", "..");
const SIGNING_SECRET = "burst-restart-signing-secret";
const ACK_WINDOW_MS = 3000;

export interface RestartBurstOptions {
  requests: number;
  users: number;
  /** Queue workers (the protocol fake). Default 2. */
  workers?: number;
  /** The fake workers' time per step. Default 25 ms. */
  stepMs?: number;
  /** How long to wait for every grid. Default 300 s. */
  timeoutMs?: number;
}

export interface RestartBurstReport {
  adapter: "slack";
  requests: number;
  users: number;
  acked_within_3s: number;
  /** Accepted requests that never got their grid. */
  lost: number;
  users_answered: number;
  /** Seconds after the burst began that the host was killed, and how many grids were out then. */
  killed_host_at_s: number;
  grids_before_kill: number;
  /** From the kill to the restarted host saying it serves again. */
  host_away_s: number;
  /** Grids posted a second time (answered just before the kill, not yet crossed off). */
  posted_twice: number;
  seconds: number;
  workers: number;
  step_ms: number;
}

export async function runRestartBurst(options: RestartBurstOptions): Promise<RestartBurstReport> {
  const stepMs = options.stepMs ?? 25;
  const perUser = Math.ceil(options.requests / options.users);
  const redis = await startRedis();
  const prefix = `burst-restart-${process.pid}`;
  const workers = await Promise.all(Array.from({ length: options.workers ?? 2 }, () => startFakeQueueWorker(redis, prefix, stepMs)));
  const fake = await startFakeSlack({ signingSecret: SIGNING_SECRET, botToken: "xoxb-burst" });
  const data = await mkdtemp(join(tmpdir(), "autolora-burst-restart-"));
  const port = await freePort();
  const env = {
    PATH: process.env.PATH, AUTOLORA_DATA_DIR: data, AUTOLORA_WEB__ENABLED: "false", AUTOLORA_SEED_POOL_FROM_BUNDLE: "false",
    AUTOLORA_WORKERS__LOCAL: "[]", SLACK_BOT_TOKEN: "xoxb-burst", SLACK_SIGNING_SECRET: SIGNING_SECRET,
    AUTOLORA_SLACK__HOST: "127.0.0.1", AUTOLORA_SLACK__PORT: String(port), AUTOLORA_SLACK__API_URL: fake.apiUrl,
    AUTOLORA_QUEUE__BACKEND: "redis", AUTOLORA_QUEUE__REDIS_URL: `redis://127.0.0.1:${redis.port}`, AUTOLORA_QUEUE__REDIS_PREFIX: prefix,
    AUTOLORA_REDIS_PASSWORD: redis.password, AUTOLORA_QUEUE__PER_USER: String(perUser), AUTOLORA_QUEUE__GLOBAL: String(options.requests),
    AUTOLORA_CHAT__PER_MINUTE: "0", AUTOLORA_CHAT__PER_DAY: "0",
  };
  const startHost = async () => {
    const child = spawn(process.execPath, [join(ROOT, "bin", "autolora.js"), "serve"], { env, stdio: ["ignore", "pipe", "pipe"] });
    const lines: string[] = [];
    createInterface({ input: child.stderr! }).on("line", (line) => lines.push(line));
    const exited = once(child, "exit");
    const ready = await Promise.race([once(createInterface({ input: child.stdout! }), "line").then(([line]) => String(line)), exited.then(() => "")]);
    if (!ready.startsWith("serving on slack")) throw new Error(`the host did not start:\n${lines.slice(-10).join("\n")}`);
    return { child, exited };
  };
  let host = await startHost();
  const grids = new Map<number, number>(); // request → times its grid was posted
  const count = () => {
    grids.clear();
    for (const message of fake.messages.values()) {
      if (message.deleted || !JSON.stringify(message.blocks).includes("autolora:upscale")) continue;
      const index = /request (\d+)\b/.exec(message.text)?.[1];
      if (index !== undefined) grids.set(Number(index), (grids.get(Number(index)) ?? 0) + 1);
    }
    return grids.size;
  };
  try {
    const url = `http://127.0.0.1:${port}/slack/events`;
    const started = performance.now();
    const userOf = (index: number) => Math.floor(index / perUser);
    const answers = await Promise.all(Array.from({ length: options.requests }, (_, index) => fake.slashCommand(url, {
      command: "/imagine", text: `a red hexagon, request ${index}`, userId: `U${String(userOf(index)).padStart(8, "0")}`, channelId: DEFAULT_CHANNEL.id,
    }).catch(() => undefined)));
    const acks = answers.map((answer) => answer?.status === 200 ? answer.ms : Infinity);
    const deadline = Date.now() + (options.timeoutMs ?? 300_000);
    const before = await settled(count, Math.ceil(options.requests / 4), deadline);
    const killedAt = performance.now();
    host.child.kill("SIGKILL");
    await host.exited;
    host = await startHost();
    const away = performance.now() - killedAt;
    const finished = await settled(count, options.requests, deadline);
    const accepted = acks.filter((ms) => Number.isFinite(ms)).length;
    return {
      adapter: "slack", requests: options.requests, users: options.users,
      acked_within_3s: acks.filter((ms) => ms <= ACK_WINDOW_MS).length,
      lost: accepted - Math.min(accepted, finished),
      users_answered: Array.from({ length: options.users }, (_, user) => user).filter((user) =>
        Array.from({ length: options.requests }, (_, index) => index).every((index) => userOf(index) !== user || grids.has(index))).length,
      killed_host_at_s: round((killedAt - started) / 1000), grids_before_kill: before, host_away_s: round(away / 1000),
      posted_twice: [...grids.values()].filter((times) => times > 1).length,
      seconds: round((performance.now() - started) / 1000), workers: workers.length, step_ms: stepMs,
    };
  } finally {
    host.child.kill("SIGTERM");
    const stopped = setTimeout(() => host.child.kill("SIGKILL"), 30_000);
    await host.exited;
    clearTimeout(stopped);
    await fake.close();
    for (const worker of workers) worker.kill();
    await redis.stop();
    await rm(data, { recursive: true, force: true });
  }
}


function round(value: number): number {
  return Math.round(value * 10) / 10;
}
