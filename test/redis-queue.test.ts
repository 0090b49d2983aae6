// queue.backend: redis with real parts: a redis-server with a password, two Python workers pulling jobs (each with
// its own LoRA cache, fetching LoRAs by hash from a host's pool server), and two hosts' queues sharing them.
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomUUID } from "node:crypto";
import { once } from "node:events";
import { mkdir, mkdtemp, readdir, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { afterAll, beforeAll, expect, it } from "vitest";
import type { WebChat } from "../src/bots/web/server.js";
import { startServing } from "../src/cli/serve.js";
import { JobCancelledError } from "../src/gpu/errors.js";
import type { GenerateRequest, JobEndEvent } from "../src/gpu/protocol.js";
import { RedisQueue } from "../src/gpu/redis-queue.js";
import { PoolServer } from "../src/pool/pool-server.js";
import { LoraStore } from "../src/pool/store.js";
import { DEFAULT_CHANNEL, startFakeSlack } from "../src/testing/fake-slack.js";
import { freePort } from "../src/testing/free-port.js";
import { startRedis, type TestRedis } from "../src/testing/redis.js";
import { EventStream, webRequest } from "./helpers/web-client.js";
import { describeRequiring, pythonWorker, redisServer } from "./helpers/requirements.js";

const root = join(import.meta.dirname, "..");
const python = join(root, ".venv", "bin", "python");
const TOKEN = "worker-token";
const SLACK_SECRET = "5b1e7c0d9a8f4e3b2c1d0e9f8a7b6c5d";

interface QueueWorkerProcess { child: ChildProcess; name: string; lines: string[]; exited: Promise<number | null> }

describeRequiring(pythonWorker, redisServer)("the Redis job queue", () => {
  let redis: TestRedis;
  let pool: PoolServer;
  let data: string;
  let sha256: string;
  const prefix = `test-${randomUUID().slice(0, 8)}`;
  const workers: QueueWorkerProcess[] = [];
  const hosts: RedisQueue[] = [];

  async function startWorker(password = redis.password): Promise<QueueWorkerProcess> {
    const cache = await mkdtemp(join(data, "worker-"));
    const child = spawn(python, ["-m", "autolora_worker", "serve", "--device", "cpu", "--queue", `redis://127.0.0.1:${redis.port}`,
      "--queue-prefix", prefix, "--pool-url", pool.url!, "--lora-cache", cache], {
      cwd: join(root, "src", "gpu", "worker"),
      env: { ...process.env, AUTOLORA_REDIS_PASSWORD: password, AUTOLORA_WORKER_TOKEN: TOKEN, OMP_NUM_THREADS: "1", PYTHONUNBUFFERED: "1" },
    });
    const lines: string[] = [];
    createInterface({ input: child.stderr! }).on("line", (line) => lines.push(line));
    const exited = once(child, "exit").then(([code]) => code as number | null);
    const first = await Promise.race([
      once(createInterface({ input: child.stdout! }), "line").then(([line]) => JSON.parse(line as string) as { name: string }),
      exited.then(() => undefined),
    ]);
    const worker = { child, name: first?.name ?? "", lines, exited };
    workers.push(worker);
    return worker;
  }

  const job = (extra: Partial<GenerateRequest> = {}): GenerateRequest => ({
    job_id: randomUUID(), prompt: "a red hexagon with stripes", seeds: [1], steps: 3, fusion: "direct",
    loras: [{ sha256, name: "striped" }], ...extra,
  });

  beforeAll(async () => {
    redis = await startRedis();
    data = await mkdtemp(join(tmpdir(), "autolora-redis-queue-"));
    const store = new LoraStore(join(data, "pool"));
    await mkdir(store.root, { recursive: true });
    // The pool the workers fetch from holds the bundle's LoRAs, as the hosts' pools below do.
    for (const name of (await readdir(join(root, "bundle", "pool"))).filter((file) => file.endsWith(".safetensors"))) {
      const bytes = await readFile(join(root, "bundle", "pool", name));
      const hash = createHash("sha256").update(bytes).digest("hex");
      await writeFile(store.pathOf(hash), bytes);
      if (name === "style-striped-01.safetensors") sha256 = hash;
    }
    pool = new PoolServer({ store, token: TOKEN, host: "127.0.0.1", port: 0 });
    await pool.start();
    hosts.push(await RedisQueue.open({ url: redis.url, prefix }), await RedisQueue.open({ url: redis.url, prefix }));
    await Promise.all([startWorker(), startWorker()]);
  }, 120_000);

  afterAll(async () => {
    for (const worker of workers) worker.child.kill("SIGKILL");
    await Promise.all(hosts.map((host) => host.close()));
    await pool?.stop();
    await redis?.stop();
  });

  it("serves both hosts' jobs on both workers, and lists the workers", async () => {
    const listed = await hosts[0]!.workers();
    expect(listed.map((worker) => worker.name).sort()).toEqual(workers.map((worker) => worker.name).sort());
    expect(listed[0]).toMatchObject({ status: "ok", family: "proving-ground" });
    const progress: number[] = [];
    const ends = await Promise.all(Array.from({ length: 8 }, (_, n) => hosts[n % 2]!.generate(job({ seeds: [n] }), {
      user: `user-${n % 3}`, onEvent: (event) => { if (event.type === "job-progress") progress.push(event.step); },
    })));
    expect(ends.map((end) => end.images.length)).toEqual(Array(8).fill(1));
    expect(ends[0]!.loras).toEqual([expect.objectContaining({ sha256 })]);
    expect(progress.filter((step) => step === 3)).toHaveLength(8);
    for (const worker of workers) expect(worker.lines.some((line) => line.includes("runs job")), worker.name).toBe(true);
  }, 120_000);

  it("tells each waiting job its place, users taking turns across hosts", async () => {
    const started: string[] = [];
    const positions = new Map<string, number[]>();
    const submit = (host: RedisQueue, user: string, label: string) => host.generate(job({ steps: 4 }), {
      user, onPosition: (position) => {
        positions.set(label, [...(positions.get(label) ?? []), position]);
        if (position === 0) started.push(label);
      },
    });
    // Two long jobs keep both workers busy, then user a queues three jobs on one host and user b one on the other.
    const busy = [submit(hosts[0]!, "x", "busy-1"), submit(hosts[1]!, "y", "busy-2")];
    await until(() => started.length === 2);
    const a = [submit(hosts[0]!, "a", "a1"), submit(hosts[0]!, "a", "a2"), submit(hosts[0]!, "a", "a3")];
    await until(() => (positions.get("a3") ?? []).length > 0);
    const b = submit(hosts[1]!, "b", "b1");
    await Promise.all([...busy, ...a, b]);
    // b's first job goes before a's second: turns, not arrival order.
    expect(started.indexOf("b1")).toBeLessThan(started.indexOf("a2"));
    expect(positions.get("a3")![0]).toBe(3);
    expect(positions.get("b1")!.at(-1)).toBe(0);
  }, 120_000);

  it("cancels a waiting job and a running one", async () => {
    let running = false;
    const controller = new AbortController();
    const long = hosts[0]!.generate(job({ steps: 200 }), {
      user: "c", signal: controller.signal, onEvent: (event) => { running ||= event.type === "job-progress"; },
    });
    await until(() => running);
    controller.abort();
    await expect(long).rejects.toBeInstanceOf(JobCancelledError);
    // Both workers busy, then one more waits: cancelled before any worker takes it.
    let busy = 0;
    const blockers = [hosts[0]!.generate(job({ steps: 40 }), { user: "d", onPosition: (position) => { if (position === 0) busy += 1; } }),
      hosts[1]!.generate(job({ steps: 40 }), { user: "e", onPosition: (position) => { if (position === 0) busy += 1; } })];
    await until(() => busy === 2);
    const waiting = new AbortController();
    let place = -1;
    const queued = hosts[1]!.generate(job(), { user: "f", signal: waiting.signal, onPosition: (position) => { place = position; } });
    await until(() => place > 0);
    waiting.abort();
    await expect(queued).rejects.toThrow(/cancelled while it waited/);
    await Promise.all(blockers);
  }, 120_000);

  it("answers /imagine on two hosts' chats through the shared queue", async () => {
    const serve = async (name: string) => startServing({
      PATH: process.env.PATH, AUTOLORA_DATA_DIR: await mkdtemp(join(data, `${name}-`)), AUTOLORA_WEB__PORT: "0",
      AUTOLORA_QUEUE__BACKEND: "redis", AUTOLORA_QUEUE__REDIS_URL: `redis://127.0.0.1:${redis.port}`, AUTOLORA_QUEUE__REDIS_PREFIX: prefix,
      AUTOLORA_REDIS_PASSWORD: redis.password,
      // No workers of its own: the bundle it seeds its pool from is embedded by the queue workers.
      AUTOLORA_WORKERS__LOCAL: "[]",
    }, (line) => logs.push(`${name} ${line}`));
    const logs: string[] = [];
    const servings = await Promise.all([serve("host-a"), serve("host-b")]);
    for (const name of ["host-a", "host-b"]) expect(logs).toContain(`${name} [pool] 120/120 added`);
    expect(workers.some((worker) => worker.lines.some((line) => /embeds \d+ LoRA file\(s\)/.test(line)))).toBe(true);
    try {
      // /pool status lists the workers pulling from Redis and the queue over every host.
      const shown: string[] = [];
      await servings[0]!.host.context.commands.get("pool")!.run({
        command: "pool", subcommand: "status", options: {}, requester: { id: "web:admin", name: "admin", admin: true },
      }, servings[0]!.host.context, { send: async (message) => void shown.push(message.text), followUp: async () => undefined });
      for (const worker of workers) expect(shown[0]).toContain(`• queue:${worker.name}: pulling from Redis · proving-ground`);
      expect(shown[0]).toMatch(/\*\*Queue\*\*: 0 waiting, 0 running here · Redis, all hosts: 0 waiting, 0 running/);
      const answers = await Promise.all(servings.map(async (serving, n) => {
        const url = (serving.chats.running().find((adapter) => adapter.name === "web") as WebChat).url!;
        const page = await webRequest(url);
        const events = await EventStream.open(url, { cookie: page.cookie });
        const posted = await webRequest(`${url}/api/command`, {
          method: "POST", headers: { cookie: page.cookie!, origin: url }, body: { text: `/imagine a ${n ? "blue" : "red"} hexagon with stripes` },
        });
        expect(posted.status).toBe(202);
        const answer = await events.waitFor((message) => message.author === "bot" && (!!message.buttons || !!message.error), 90_000);
        events.close();
        return { answer, texts: events.history.get(answer.id) ?? [] };
      }));
      for (const { answer, texts } of answers) {
        expect(answer.error, answer.text).toBeUndefined();
        expect(answer.image).toMatch(/^\/images\//);
        // Drawn by a queue worker, its steps shown as they came (edits are spaced out, so not every one).
        expect(texts.some((text) => /step \d+ of 20/.test(text))).toBe(true);
        // Each host's own pool: covering picks a hexagon and a stripes LoRA for either prompt.
        expect(answer.text).toMatch(/LoRAs: shape-hexagon-\d+ \(\d\.\d\d\), style-striped-\d+ \(\d\.\d\d\) · fusion gated/);
      }
    } finally {
      await Promise.all(servings.map((serving) => serving.stop()));
    }
  }, 240_000);

  it("serves a web-chat host and a Slack host process from the same workers; the Slack host killed mid-burst and started again answers every job it had accepted", async () => {
    const fake = await startFakeSlack({ signingSecret: SLACK_SECRET, botToken: "xoxb-fake" });
    const port = await freePort();
    const slackData = await mkdtemp(join(data, "slack-host-"));
    const queueEnv = {
      PATH: process.env.PATH, AUTOLORA_QUEUE__BACKEND: "redis", AUTOLORA_QUEUE__REDIS_URL: `redis://127.0.0.1:${redis.port}`,
      AUTOLORA_QUEUE__REDIS_PREFIX: prefix, AUTOLORA_REDIS_PASSWORD: redis.password, AUTOLORA_CHAT__PER_MINUTE: "0",
      AUTOLORA_GENERATION__STEPS: "8", AUTOLORA_GENERATION__SEEDS_PER_PROMPT: "2", AUTOLORA_WORKERS__LOCAL: "[]",
    };
    const startSlackHost = async () => {
      const child = spawn(process.execPath, [join(root, "test", "fixtures", "serve-host.mjs")], {
        env: {
          ...queueEnv, AUTOLORA_DATA_DIR: slackData, AUTOLORA_WEB__ENABLED: "false", SLACK_BOT_TOKEN: "xoxb-fake",
          SLACK_SIGNING_SECRET: SLACK_SECRET, AUTOLORA_SLACK__HOST: "127.0.0.1", AUTOLORA_SLACK__PORT: String(port),
          AUTOLORA_SLACK__API_URL: fake.apiUrl, OMP_NUM_THREADS: "1",
        },
      });
      const lines: string[] = [];
      createInterface({ input: child.stderr! }).on("line", (line) => lines.push(line));
      const exited = once(child, "exit");
      const ready = await Promise.race([once(createInterface({ input: child.stdout! }), "line").then(([line]) => String(line)), exited.then(() => "")]);
      expect(ready, lines.join("\n")).toBe("serving on slack; Ctrl-C stops");
      return { child, lines, exited };
    };
    const webHost = await startServing({
      ...queueEnv, AUTOLORA_DATA_DIR: await mkdtemp(join(data, "web-host-")), AUTOLORA_WEB__PORT: "0",
    }, () => undefined);
    let slackHost = await startSlackHost();
    const runs = () => workers.reduce((sum, worker) => sum + worker.lines.filter((line) => line.includes("runs job")).length, 0);
    const runsBefore = runs();
    const journaled = async () => (await readdir(join(slackData, "jobs")).catch(() => [] as string[])).filter((name) => name.endsWith(".json")).length;
    const grids = () => [...fake.files.values()].filter((file) => file.completed && file.data.length > 0);
    try {
      const slackUrl = `http://127.0.0.1:${port}/slack/events`;
      const takes = Array.from({ length: 8 }, (_, n) => n);
      for (const n of takes) {
        const sent = await fake.slashCommand(slackUrl, {
          command: "/imagine", text: `a red hexagon with stripes, take ${n}`, userId: `UTAKER${n % 4}`, channelId: DEFAULT_CHANNEL.id,
        });
        expect(sent.status, sent.body).toBe(200);
      }
      // Two from the web chat in the same burst, on the same workers.
      const webUrl = (webHost.chats.running().find((adapter) => adapter.name === "web") as WebChat).url!;
      const page = await webRequest(webUrl);
      const events = await EventStream.open(webUrl, { cookie: page.cookie });
      for (const colour of ["blue", "green"]) {
        const posted = await webRequest(`${webUrl}/api/command`, {
          method: "POST", headers: { cookie: page.cookie!, origin: webUrl }, body: { text: `/imagine a ${colour} hexagon with stripes` },
        });
        expect(posted.status).toBe(202);
      }
      await eventually(async () => (await journaled()) === 8);
      // Mid-burst: a job is answered, most are not.
      await eventually(async () => (await journaled()) < 8, 120_000);
      slackHost.child.kill("SIGKILL");
      await slackHost.exited;
      const unanswered = await journaled();
      expect(unanswered).toBeGreaterThanOrEqual(3);
      const pending = await Promise.all((await readdir(join(slackData, "jobs"))).filter((name) => name.endsWith(".json"))
        .map(async (name) => (JSON.parse(await readFile(join(slackData, "jobs", name), "utf8")) as { prompt: string }).prompt));
      slackHost = await startSlackHost();
      await until(() => slackHost.lines.some((line) => line.includes(`taking up ${unanswered} job(s) accepted before the restart`)), 30_000);
      await until(() => takes.every((n) => grids().some((file) => file.initial_comment?.includes(`take ${n}*`))), 180_000);
      await eventually(async () => (await journaled()) === 0);
      const webAnswers = await Promise.all(["blue", "green"].map((colour) => events.waitFor((message) =>
        message.author === "bot" && message.text.includes(colour) && (!!message.buttons || !!message.error), 120_000)));
      events.close();
      for (const answer of webAnswers) expect(answer.error, answer.text).toBeUndefined();
      const slackTexts = [...fake.messages.values()].map((message) => message.text);
      expect(slackTexts.filter((text) => text.includes("❌"))).toEqual([]);
      // Answered before the kill: not again. (One whose grid was out but not yet crossed off is posted again.)
      for (const n of takes.filter((take) => !pending.some((prompt) => prompt.endsWith(`take ${take}`)))) {
        expect(grids().filter((file) => file.initial_comment?.includes(`take ${n}*`)), `take ${n}`).toHaveLength(1);
      }
      // Each take was drawn once: finished jobs were handed back by Redis, queued ones followed, none drawn again.
      expect(runs() - runsBefore).toBe(10);
      expect(slackTexts.some((text) => text.includes("taken up again after the bot restarted"))).toBe(true);
      // Stopped as a person stops it, the host is gone within seconds.
      slackHost.child.kill("SIGTERM");
      const [code] = await Promise.race([slackHost.exited, new Promise<[string]>((resolve) => setTimeout(() => resolve(["still running"]), 30_000))]);
      expect(code, slackHost.lines.slice(-5).join("\n")).toBe(0);
    } finally {
      slackHost.child.kill("SIGKILL");
      await slackHost.exited;
      await webHost.stop();
      await fake.close();
    }
  }, 420_000);

  it("finishes a job on the other worker when its worker is killed mid-job, losing nothing", async () => {
    const [first, second] = workers;
    let retried = "";
    const progressed = new Set<string>();
    const ends: Promise<JobEndEvent>[] = [];
    for (let n = 0; n < 2; n++) {
      const request = job({ steps: 30, seeds: [n] });
      ends.push(hosts[n]!.generate(request, {
        user: `k${n}`, onEvent: () => progressed.add(request.job_id), onRetry: (_worker, error) => { retried = error.message; },
      }));
    }
    await until(() => progressed.size === 2);
    first!.child.kill("SIGKILL"); // mid-job: both workers have one
    const done = await Promise.all(ends);
    expect(done.map((end) => end.images.length)).toEqual([1, 1]);
    expect(retried).toMatch(/stopped renewing/);
    expect(second!.lines.filter((line) => line.includes("runs job")).length).toBeGreaterThanOrEqual(2);
  }, 180_000);

  it("gives a worker with the wrong password nothing: it stops at once, saying why", async () => {
    const wrong = await startWorker("guess");
    expect(await wrong.exited).toBe(2);
    expect(wrong.lines.join("\n")).toMatch(/Redis refused this worker's credentials/);
    expect(wrong.lines.join("\n")).not.toContain("guess");
  }, 60_000);
});

async function eventually(check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("timed out waiting");
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}


async function until(check: () => boolean, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("timed out waiting");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
