// `autolora pool add` killed with SIGKILL after storing a LoRA and before writing its index row leaves nothing
// for good: while it runs its copy is never swept, once it is dead the next command sweeps it, and the same file
// goes in cleanly. A FIFO is refused at once. Real processes: the built CLI (bin/autolora.js; `npm run build`
// first) against a remote worker this test plays, so the moment between storing and indexing is observable.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";

const root = join(import.meta.dirname, "..");
const cli = join(root, "bin", "autolora.js");
const hexagon = join(root, "bundle", "pool", "shape-hexagon-01.safetensors");
const TOKEN = "pool-crash-test-token";

/** The worker's side: /health answers; /embed waits for `release` while `holding`, then embeds from the file's hash. */
let holding = true;
const embedsSeen: Array<() => void> = [];
const held: ServerResponse[] = [];
let worker: Server;
let workerUrl: string;

async function embed(request: IncomingMessage, response: ServerResponse) {
  let raw = "";
  for await (const chunk of request) raw += chunk;
  const about = async (path: string) => {
    const digest = createHash("sha256").update(await readFile(path)).digest();
    const vector = Array.from({ length: 8 }, (_, index) => digest[index]! - 127.5);
    const norm = Math.hypot(...vector);
    return { sha256: digest.toString("hex"), format: "diffusers", family: "proving-ground", modules: 1, ranks: [4], unknown_keys: [],
      embedding: vector.map((value) => value / norm), dim: 8, encoder_version: "fake-enc" };
  };
  // One file ({path}) or many ({paths}: {"results": [...]}), as the real worker answers.
  const body = JSON.parse(raw) as { path?: string; paths?: string[] };
  const answer = body.paths ? { results: await Promise.all(body.paths.map(about)) } : await about(body.path!);
  response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(answer));
}

beforeAll(async () => {
  worker = createServer((request, response) => {
    if (request.headers.authorization !== `Bearer ${TOKEN}`) return void response.writeHead(401).end();
    if (request.url === "/health") {
      return void response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({
        status: "ok", family: "proving-ground", device: "cpu", model_version: "fake-1", gate_version: null,
        encoder_version: "fake-enc", cached_loras: [], busy: false,
      }));
    }
    if (request.url === "/embed" && holding) {
      held.push(response);
      for (const seen of embedsSeen.splice(0)) seen();
      return;
    }
    if (request.url === "/embed") return void embed(request, response);
    response.writeHead(404).end();
  });
  await new Promise<void>((resolve) => worker.listen(0, "127.0.0.1", resolve));
  workerUrl = `http://127.0.0.1:${(worker.address() as AddressInfo).port}`;
});
afterAll(async () => {
  for (const response of held) response.destroy();
  await new Promise<void>((resolve) => worker.close(() => resolve()));
});

const children: ChildProcess[] = [];
afterEach(() => {
  for (const child of children.splice(0)) child.kill("SIGKILL");
});

function environment(data: string): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH, AUTOLORA_DATA_DIR: data, AUTOLORA_WORKER_TOKEN: TOKEN,
    AUTOLORA_WORKERS__LOCAL: "[]", AUTOLORA_WORKERS__REMOTE: JSON.stringify([workerUrl]),
  };
}

/** Start `autolora …` as its own process. */
function start(data: string, ...argv: string[]) {
  const child = spawn(process.execPath, [cli, ...argv], { env: environment(data), stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (chunk: Buffer) => { stdout += chunk; });
  child.stderr!.on("data", (chunk: Buffer) => { stderr += chunk; });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal, stdout, stderr })));
  return { child, exited };
}

const run = (data: string, ...argv: string[]) => start(data, ...argv).exited;
const nextEmbed = () => new Promise<void>((resolve) => embedsSeen.push(resolve));

describe.runIf(existsSync(join(root, "dist", "cli", "main.js")))("pool add killed half way", () => {
  it("leaves nothing for good: a live add is not swept, a dead one's copy is, and the file goes in again", async () => {
    const data = await mkdtemp(join(tmpdir(), "autolora-crash-"));
    const sha256 = createHash("sha256").update(await readFile(hexagon)).digest("hex");
    holding = true;
    const embedAsked = nextEmbed();
    const adding = start(data, "pool", "add", hexagon);
    await embedAsked; // the CLI stored the file and waits for the worker: the index row is not written yet
    expect(await readdir(join(data, "pool"))).toContain(`${sha256}.safetensors`);

    // Another command meanwhile (as `serve` or an admin might run one) must not sweep the live add's copy.
    const meanwhile = await run(data, "pool", "list", "--json");
    expect(meanwhile.stdout).toBe("");
    expect(meanwhile.stderr).not.toMatch(/swept/);
    expect(await readdir(join(data, "pool"))).toContain(`${sha256}.safetensors`);

    adding.child.kill("SIGKILL");
    expect((await adding.exited).signal).toBe("SIGKILL");
    const after = await run(data, "pool", "list", "--json");
    expect(after.code).toBe(0);
    expect(after.stderr).toMatch(new RegExp(`^\\[pool\\] swept .*1 stored file with no index row \\(${sha256.slice(0, 12)}\\)`, "m"));
    expect(await readdir(join(data, "pool"))).toEqual([]);

    holding = false;
    const again = await run(data, "pool", "add", hexagon, "--json");
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ status: "added", id: sha256 });
    expect(await readdir(join(data, "pool"))).toEqual([`${sha256}.safetensors`]);
  }, 120_000);

  it("refuses a FIFO at once, naming it", async () => {
    const data = await mkdtemp(join(tmpdir(), "autolora-crash-"));
    const fifo = join(data, "pipe.safetensors");
    execFileSync("mkfifo", [fifo]);
    holding = false;
    const added = start(data, "pool", "add", fifo);
    // A hang would leave the CLI blocked on the FIFO for good; the test's own timeout is the limit.
    const { code, stderr } = await added.exited;
    expect(code).toBe(2);
    expect(stderr).toContain(`${fifo} is a named pipe (FIFO), not a regular file`);
  }, 30_000);
});
