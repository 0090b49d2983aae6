// LoRA bytes by hash for remote workers: only with the worker token, only files of the pool, streamed whole.
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PoolServer } from "../src/pool/pool-server.js";
import { LoraStore } from "../src/pool/store.js";

describe("pool server", () => {
  let folder: string;
  let server: PoolServer;
  let url: string;
  const logs: string[] = [];
  const bytes = randomBytes(3 * 1024 * 1024 + 17); // several stream chunks
  const sha256 = createHash("sha256").update(bytes).digest("hex");
  const auth = { authorization: "Bearer worker-secret" };

  beforeAll(async () => {
    folder = await mkdtemp(join(tmpdir(), "autolora-pool-server-"));
    const store = new LoraStore(folder);
    await writeFile(store.pathOf(sha256), bytes);
    server = new PoolServer({ store, token: "worker-secret", host: "127.0.0.1", port: 0, log: (line) => logs.push(line) });
    url = await server.start();
  });

  afterAll(async () => {
    await server.stop();
    await rm(folder, { recursive: true, force: true });
  });

  it("streams a stored LoRA, whole and unchanged, to a worker with the token", async () => {
    const response = await fetch(`${url}/pool/${sha256}`, { headers: auth });
    expect(response.status).toBe(200);
    expect(response.headers.get("content-length")).toBe(String(bytes.length));
    expect(response.headers.get("etag")).toBe(`"${sha256}"`);
    const body = Buffer.from(await response.arrayBuffer());
    expect(createHash("sha256").update(body).digest("hex")).toBe(sha256);

    const head = await fetch(`${url}/pool/${sha256}`, { method: "HEAD", headers: auth });
    expect(head.status).toBe(200);
    expect(head.headers.get("content-length")).toBe(String(bytes.length));
  });

  it("gives nothing without the right token, and never logs the token given", async () => {
    const wrong: Array<Record<string, string>> = [{}, { authorization: "Bearer guess" }, { authorization: "worker-secret" }, { authorization: "Bearer worker-secret2" }];
    for (const headers of wrong) {
      const response = await fetch(`${url}/pool/${sha256}`, { headers });
      expect(response.status).toBe(401);
      expect(response.headers.get("www-authenticate")).toBe("Bearer");
      expect(await response.text()).not.toContain(bytes.subarray(0, 16).toString("hex"));
    }
    // Unauthorised requests learn nothing, not even whether a LoRA exists.
    expect((await fetch(`${url}/pool/${"0".repeat(64)}`)).status).toBe(401);
    expect(logs.some((line) => line.includes("refused"))).toBe(true);
    expect(logs.join("\n")).not.toContain("guess");
  });

  it("answers 404 for LoRAs it does not have and anything that is not a sha256, 405 for writes", async () => {
    const missing = await fetch(`${url}/pool/${"ab".repeat(32)}`, { headers: auth });
    expect(missing.status).toBe(404);
    expect((await missing.json() as { error: string }).error).toContain("no LoRA");
    for (const path of ["/pool/ABC", `/pool/${sha256.toUpperCase()}`, `/pool/../${sha256}`, "/pool/", "/", `/pool/${sha256}/x`]) {
      expect((await fetch(`${url}${path}`, { headers: auth })).status).toBe(404);
    }
    const put = await fetch(`${url}/pool/${sha256}`, { method: "PUT", headers: auth, body: "x" });
    expect(put.status).toBe(405);
  });

  it("refuses to start without a token", () => {
    expect(() => new PoolServer({ store: new LoraStore(folder), token: "", host: "127.0.0.1", port: 0 })).toThrow(/AUTOLORA_WORKER_TOKEN/);
  });
});
