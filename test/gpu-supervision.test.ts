// Worker supervision and dispatch against real child processes: the protocol fake (fixtures/fake-worker.mjs)
// for crashes, restarts, retries, cancellation and timeouts; the real Python worker once, end to end.
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { once } from "node:events";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { afterEach, describe, expect, it } from "vitest";
import { createWorkerClient } from "../src/gpu/client.js";
import { WorkerDispatcher } from "../src/gpu/dispatch.js";
import {
  JobCancelledError, WorkerRequestError, WorkerTimeoutError, WorkerUnavailableError,
} from "../src/gpu/errors.js";
import type { EmbedResult, GenerateRequest } from "../src/gpu/protocol.js";
import { combineWorkerSources, RemoteWorkers } from "../src/gpu/remote.js";
import { ingestLora } from "../src/pool/ingest.js";
import { LanceLoraIndex } from "../src/pool/lancedb-index.js";
import { PoolServer } from "../src/pool/pool-server.js";
import { LoraStore } from "../src/pool/store.js";
import { pythonWorkerCommand, WorkerSupervisor, type SupervisorOptions } from "../src/gpu/supervisor.js";
import { describeRequiring, pythonWorker } from "./helpers/requirements.js";

const fakeWorker = join(import.meta.dirname, "fixtures", "fake-worker.mjs");
const root = join(import.meta.dirname, "..");
const running: WorkerSupervisor[] = [];

function supervise(envs: Array<Record<string, string>>, options: Partial<SupervisorOptions> = {}) {
  const log: string[] = [];
  const supervisor = new WorkerSupervisor({
    workers: envs.map((env) => ({ command: process.execPath, args: [fakeWorker], env })),
    backoffMs: 50, startupTimeoutMs: 10_000, log: (line) => log.push(line), ...options,
  });
  running.push(supervisor);
  return { supervisor, log };
}

let jobNumber = 0;
const job = (extra: Partial<GenerateRequest> = {}): GenerateRequest =>
  ({ job_id: `job-${++jobNumber}`, prompt: "a red hexagon", seeds: [1, 2], steps: 6, ...extra });

const until = async (check: () => boolean, timeoutMs = 10_000) => {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("timed out waiting");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
};

afterEach(async () => {
  await Promise.all(running.splice(0).map((supervisor) => supervisor.stop()));
});

describe("worker supervision", () => {
  it("starts each worker with its own token and restarts one that is killed", async () => {
    const { supervisor, log } = supervise([{}, {}]);
    await supervisor.start();
    const [first, second] = supervisor.ready();
    expect(supervisor.status().map((s) => s.state)).toEqual(["ready", "ready"]);
    expect((await first!.health()).status).toBe("ok");
    const before = supervisor.status()[0]!.pid!;
    process.kill(before, "SIGKILL");
    await until(() => supervisor.status()[0]!.restarts === 1 && supervisor.status()[0]!.state === "ready");
    expect(supervisor.status()[0]!.pid).not.toBe(before);
    expect(log.join("\n")).toMatch(/\[local-1\] killed by SIGKILL; restarting in 50 ms/);
    expect(second!.id).toBe("local-2");
  });

  it("refuses requests without the worker's token", async () => {
    const { supervisor } = supervise([{}]);
    await supervisor.start();
    const url = supervisor.status()[0]!.url!;
    expect((await fetch(`${url}/health`)).status).toBe(401);
    expect((await fetch(`${url}/health`, { headers: { authorization: "Bearer guess" } })).status).toBe(401);
    expect((await supervisor.ready()[0]!.health()).status).toBe("ok");
  });

  it("passes a worker only the host environment it needs, never the host's secrets", async () => {
    const secrets = { DISCORD_TOKEN: "discord-secret", SLACK_BOT_TOKEN: "xoxb-secret", SLACK_SIGNING_SECRET: "signing",
      CIVITAI_API_KEY: "civitai-secret", HF_TOKEN: "hf-secret", AUTOLORA_WORKER_TOKEN: "the-hosts-remote-token",
      AWS_SECRET_ACCESS_KEY: "aws-secret" };
    const needed = { PATH: process.env.PATH!, HOME: "/home/bot", LANG: "C.UTF-8", OMP_NUM_THREADS: "2",
      CUDA_VISIBLE_DEVICES: "1", HF_HUB_OFFLINE: "1", PYTHONPATH: "/opt/lib" };
    const { supervisor, log } = supervise([{ FAKE_PRINT_ENV: "1" }], { environment: { ...secrets, ...needed } });
    await supervisor.start();
    const line = log.find((entry) => entry.includes(`"event":"environment"`))!;
    const given = JSON.parse(line.slice(line.indexOf("{"))).environment as Record<string, string>;
    expect(given).toMatchObject({ ...needed, FAKE_PRINT_ENV: "1" });
    for (const name of Object.keys(secrets).filter((name) => name !== "AUTOLORA_WORKER_TOKEN")) expect(given).not.toHaveProperty(name);
    // The worker's token is its own, fresh one: never the one the host shares with remote workers.
    expect(given.AUTOLORA_WORKER_TOKEN).toMatch(/^[0-9a-f]{64}$/);
    expect(Object.values(given)).not.toContain("the-hosts-remote-token");
  });

  it("names a worker that cannot start and keeps retrying it with backoff", async () => {
    const { supervisor, log } = supervise([{ FAKE_EXIT_AT_START: "1" }], { startupTimeoutMs: 2_000 });
    await expect(supervisor.start(500)).rejects.toThrow(/local-1 \(exited with code 3\) did not start within 500 ms/);
    await until(() => supervisor.status()[0]!.restarts >= 2);
    expect(log.filter((line) => line.includes("restarting in"))[1]).toMatch(/restarting in 100 ms/);
  });
});

describe("dispatch", () => {
  it("streams progress and returns the images", async () => {
    const { supervisor } = supervise([{}]);
    await supervisor.start();
    const events: string[] = [];
    const end = await new WorkerDispatcher(supervisor).generate(job(), { onEvent: (event) => events.push(event.type) });
    expect(end.images.map((image) => image.seed)).toEqual([1, 2]);
    expect(events).toEqual(["job-start", ...Array(6).fill("job-progress"), "job-end"]);
  });

  it("retries a job whose worker dies mid-job on another worker", async () => {
    const folder = await mkdtemp(join(tmpdir(), "autolora-crash-"));
    const { supervisor } = supervise([{ FAKE_CRASH_AT_STEP: "3", FAKE_CRASH_MARKER: join(folder, "a") },
      { FAKE_CRASH_AT_STEP: "3", FAKE_CRASH_MARKER: join(folder, "b") }]);
    await supervisor.start();
    const retries: string[] = [];
    const dispatcher = new WorkerDispatcher(supervisor, { onRetry: (id, worker) => retries.push(`${id}@${worker}`) });
    const first = job();
    // Both workers crash once at step 3: the retry lands on the other worker, which then crashes too.
    await expect(dispatcher.generate(first)).rejects.toThrow(
      new RegExp(`job ${first.job_id} failed twice because its worker went away \\(local-\\d, then local-\\d\\)`));
    expect(retries).toHaveLength(1);
    expect(existsSync(join(folder, "a")) && existsSync(join(folder, "b"))).toBe(true);
    // The host keeps serving: both workers restart and the next job completes.
    await until(() => supervisor.ready().length === 2);
    expect((await dispatcher.generate(job())).images).toHaveLength(2);
  });

  it("retries on the same worker after its restart when it is the only one", async () => {
    const folder = await mkdtemp(join(tmpdir(), "autolora-crash-"));
    const { supervisor } = supervise([{ FAKE_CRASH_AT_STEP: "2", FAKE_CRASH_MARKER: join(folder, "once") }]);
    await supervisor.start();
    const retries: string[] = [];
    const dispatcher = new WorkerDispatcher(supervisor, { onRetry: (_, worker) => retries.push(worker) });
    const end = await dispatcher.generate(job());
    expect(end.images).toHaveLength(2);
    expect(retries).toEqual(["local-1"]);
    expect(supervisor.status()[0]!.restarts).toBe(1);
  });

  it("fails clearly when no worker comes back in time", async () => {
    const { supervisor } = supervise([{}]);
    await supervisor.start();
    await supervisor.stop();
    const dispatcher = new WorkerDispatcher(supervisor, { waitForWorkerMs: 100 });
    await expect(dispatcher.generate(job())).rejects.toThrow(/no GPU worker became ready within 0 s; please try again later/);
  });

  it("cancels a running job on request, and times out a job that runs too long", async () => {
    const { supervisor } = supervise([{ FAKE_STEP_MS: "100" }], { jobTimeoutMs: 350 });
    await supervisor.start();
    const worker = supervisor.ready()[0]!;
    const controller = new AbortController();
    const cancelled = worker.generate(job({ steps: 50 }), {
      signal: controller.signal, onEvent: (event) => { if (event.type === "job-progress") controller.abort(); },
    });
    await expect(cancelled).rejects.toBeInstanceOf(JobCancelledError);
    await expect(worker.generate(job({ steps: 50 }))).rejects.toBeInstanceOf(WorkerTimeoutError);
    expect((await worker.health()).status).toBe("ok");
  });

  it("does not retry a request the worker refuses", async () => {
    const { supervisor } = supervise([{}]);
    await supervisor.start();
    const retries: string[] = [];
    const dispatcher = new WorkerDispatcher(supervisor, { onRetry: (id) => retries.push(id) });
    await expect(dispatcher.generate(job({ seeds: [] }))).rejects.toBeInstanceOf(WorkerRequestError);
    expect(retries).toEqual([]);
  });

  it("embeds many files in one call, a missing one failing alone; a worker from before batches gets one file a call", async () => {
    const { supervisor } = supervise([{}]);
    await supervisor.start();
    const hexagon = join(root, "bundle", "pool", "shape-hexagon-01.safetensors");
    const striped = join(root, "bundle", "pool", "style-striped-01.safetensors");
    const sha = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");
    const results = await new WorkerDispatcher(supervisor).embedMany([hexagon, "/nowhere/absent.safetensors", striped]);
    expect((results[0] as EmbedResult).sha256).toBe(sha(hexagon));
    expect(results[1]).toBeInstanceOf(WorkerRequestError);
    expect((results[1] as Error).message).toMatch(/absent\.safetensors/);
    expect((results[2] as EmbedResult).sha256).toBe(sha(striped));

    // An older worker answers {paths} with a 400 (it wants {path}): the client sends the files one by one.
    const worker = supervisor.ready()[0]!;
    const asked: string[] = [];
    const older: typeof fetch = async (url, init) => {
      const body = JSON.parse(String(init!.body)) as { path?: string; paths?: string[] };
      asked.push(body.paths ? "paths" : "path");
      if (body.paths) return Response.json({ error: { code: "invalid-request", message: "field 'path': Field required" } }, { status: 400 });
      return Response.json(await worker.embed(body.path!));
    };
    const client = createWorkerClient({ url: "http://older-worker", token: "t", fetch: older });
    const one = await client.embedMany!([striped, hexagon]);
    expect(one.map((result) => (result as EmbedResult).sha256)).toEqual([sha(striped), sha(hexagon)]);
    expect(asked).toEqual(["paths", "path", "path"]);
  });

  it("reports an unreachable worker as unavailable", async () => {
    const client = createWorkerClient({ url: "http://127.0.0.1:9", token: "t" });
    await expect(client.health()).rejects.toBeInstanceOf(WorkerUnavailableError);
    await expect(client.generate(job())).rejects.toThrow(/worker http:\/\/127\.0\.0\.1:9 is not reachable/);
  });
});

const python = join(root, ".venv", "bin", "python");
describeRequiring(pythonWorker)("the real Python worker", () => {
  it("is spawned, becomes healthy and generates through the dispatcher", async () => {
    const command = pythonWorkerCommand(python, "cpu", "proving-ground");
    const supervisor = new WorkerSupervisor({ workers: [{ ...command, env: { PYTHONUNBUFFERED: "1" } }], log: () => undefined });
    running.push(supervisor);
    await supervisor.start(90_000);
    const health = await supervisor.ready()[0]!.health();
    expect(health).toMatchObject({ status: "ok", family: "proving-ground", device: "cpu" });
    const progress: number[] = [];
    const end = await new WorkerDispatcher(supervisor).generate(job({ seeds: [7], steps: 2 }), {
      onEvent: (event) => { if (event.type === "job-progress") progress.push(event.step); },
    });
    expect(progress).toEqual([1, 2]);
    expect(end.images[0]!.png_base64.length).toBeGreaterThan(100);
    expect(Buffer.from(end.images[0]!.png_base64, "base64").subarray(1, 4).toString()).toBe("PNG");

    // Ingest through the worker's LoRA encoder into LanceDB: the LoRA is then its own nearest neighbour.
    const data = await mkdtemp(join(tmpdir(), "autolora-real-ingest-"));
    const index = await LanceLoraIndex.open({ uri: join(data, "lancedb") });
    const deps = { store: new LoraStore(join(data, "pool")), index, embed: (path: string) => dispatcher.embed(path) };
    const dispatcher = new WorkerDispatcher(supervisor);
    for (const id of ["shape-hexagon-01", "style-striped-01", "style-dotted-03"]) {
      const added = await ingestLora(join(root, "bundle", "pool", `${id}.safetensors`), { name: id }, deps);
      expect(added.lora).toMatchObject({ family: "proving-ground", name: id, state: "active" });
    }
    const hexagon = await index.get((await index.list()).find((lora) => lora.name === "shape-hexagon-01")!.id);
    const hits = await index.search(hexagon!.vector, 3);
    expect(hits[0]!.lora.name).toBe("shape-hexagon-01");
    expect(hits[0]!.similarity).toBeCloseTo(1, 4);

    // The proving ground's evaluator names what the worker's own picture shows (how `bench quality` scores images).
    expect(health.judge).toBe(true);
    const verdict = await dispatcher.judge([Buffer.from(end.images[0]!.png_base64, "base64")]);
    expect(verdict.labels).toHaveLength(1);
    expect(Object.keys(verdict.labels[0]!).sort()).toEqual(["colour", "shape", "style"]);
    await expect(dispatcher.judge([Buffer.from("not a picture")])).rejects.toThrow(/field 'images.0': not a base64 PNG/);
  }, 120_000);

  it("fetches the LoRAs a job names by hash from the host's pool server, once, into a cache checked by hash", async () => {
    const data = await mkdtemp(join(tmpdir(), "autolora-pool-fetch-"));
    const store = new LoraStore(join(data, "pool"));
    await mkdir(store.root, { recursive: true });
    const bytes = readFileSync(join(root, "bundle", "pool", "style-striped-01.safetensors"));
    const sha256 = createHash("sha256").update(bytes).digest("hex");
    await writeFile(store.pathOf(sha256), bytes);
    const pool = new PoolServer({ store, token: "shared-secret", host: "127.0.0.1", port: 0 });
    const poolUrl = await pool.start();
    const cache = join(data, "worker-cache");
    const child = spawn(python, ["-m", "autolora_worker", "serve", "--port", "0", "--device", "cpu", "--pool-url", poolUrl, "--lora-cache", cache],
      { cwd: join(root, "src", "gpu", "worker"), env: { ...process.env, AUTOLORA_WORKER_TOKEN: "shared-secret", OMP_NUM_THREADS: "1" } });
    try {
      const [line] = await once(createInterface({ input: child.stdout }), "line") as [string];
      const worker = createWorkerClient({ url: `http://127.0.0.1:${JSON.parse(line).port}`, token: "shared-secret", id: "remote-1" });
      // No path: the worker is on "another machine" and has only the hash.
      const end = await worker.generate(job({ seeds: [3], steps: 2, loras: [{ sha256, name: "striped" }], fusion: "direct" }));
      expect(end.loras).toEqual([expect.objectContaining({ sha256, name: "striped" })]);
      expect(existsSync(join(cache, `${sha256}.safetensors`))).toBe(true);
      // Fetched once: with the pool's copy gone, the next job still has it.
      await rm(store.pathOf(sha256));
      const again = await worker.generate(job({ seeds: [3], steps: 2, loras: [{ sha256, name: "striped" }], fusion: "direct" }));
      expect(again.images[0]!.png_base64).toBe(end.images[0]!.png_base64);
      // A LoRA no pool has fails that job only, saying why.
      await expect(worker.generate(job({ seeds: [3], steps: 2, loras: [{ sha256: "ab".repeat(32) }] })))
        .rejects.toThrow(/could not be fetched: .* does not have it/);
    } finally {
      child.kill();
      await pool.stop();
    }
  }, 120_000);

  it("exits when its host is killed with SIGKILL", async () => {
    const host = spawn(process.execPath, [join(import.meta.dirname, "fixtures", "supervisor-host.mjs"), python],
      { stdio: ["ignore", "pipe", "pipe"] });
    let pid: number | undefined;
    try {
      const [line] = await once(createInterface({ input: host.stdout! }), "line") as [string];
      pid = (JSON.parse(line) as { pid: number }).pid;
      expect(alive(pid)).toBe(true);
      host.kill("SIGKILL");
      // Generous for a loaded machine: the worker notices its stdin close within milliseconds.
      await until(() => !alive(pid!), 15_000);
    } finally {
      host.kill("SIGKILL");
      if (pid !== undefined && alive(pid)) process.kill(pid, "SIGKILL");
    }
  }, 120_000);
});

/** Whether `pid` is a live process (a zombie, dead and waiting to be reaped, is not). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.[0] !== "Z";
  } catch {
    return true; // no /proc (macOS): signal 0 reached it
  }
}

describe("remote workers", () => {
  it("sends jobs only to remote workers that answer with the shared token, alongside local ones", async () => {
    const child = spawn(process.execPath, [fakeWorker], { env: { ...process.env, AUTOLORA_WORKER_TOKEN: "shared-secret" } });
    try {
      const [line] = await once(createInterface({ input: child.stdout }), "line") as [string];
      const url = `http://127.0.0.1:${JSON.parse(line).port}`;
      const { supervisor } = supervise([{}]);
      await supervisor.start();
      const remote = new RemoteWorkers({ urls: [url, "http://127.0.0.1:9"], token: "shared-secret", intervalMs: 50 });
      const wrongToken = new RemoteWorkers({ urls: [url], token: "guess", intervalMs: 50 });
      await Promise.all([remote.start(), wrongToken.start()]);
      expect(remote.ready().map((worker) => worker.id)).toEqual(["remote-1"]);
      expect(await wrongToken.whenAnyReady(100)).toBe(false);
      const all = combineWorkerSources(wrongToken, remote, supervisor);
      expect(all.ready().map((worker) => worker.id)).toEqual(["remote-1", "local-1"]);
      const dispatcher = new WorkerDispatcher(all);
      const ends = await Promise.all([dispatcher.generate(job()), dispatcher.generate(job())]);
      expect(ends.map((end) => end.images.length)).toEqual([2, 2]);
      remote.stop();
      wrongToken.stop();
    } finally {
      child.kill();
    }
  });
});
