// Downloads of LoRAs named by URL (admins' /lora add, crawl sources): https only, no private or loopback
// address (also after a redirect), a size cap, the source's sha256 checked, and nothing left behind on failure.
import { createHash } from "node:crypto";
import { mkdtemp, readdir, readFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { allowedAddress, download, DownloadError } from "../src/pool/download.js";

const body = Buffer.alloc(50_000, 7);
let server: Server;
let base: string;
let tempDir: string;

beforeAll(async () => {
  tempDir = await mkdtemp(join(tmpdir(), "autolora-download-"));
  server = createServer((request, response) => {
    if (request.url === "/lora.safetensors") return void response.writeHead(200, { "content-length": body.length }).end(body);
    if (request.url === "/chunked") { response.writeHead(200); response.write(body); return void response.end(body); }
    if (request.url === "/to-private") return void response.writeHead(302, { location: "http://10.0.0.1/x" }).end();
    if (request.url === "/to-private-https") return void response.writeHead(302, { location: "https://10.0.0.1/x" }).end();
    if (request.url === "/hop") return void response.writeHead(301, { location: "/lora.safetensors" }).end();
    if (request.url === "/busy") return void response.writeHead(429, { "retry-after": "7" }).end();
    response.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

const fail = async (promise: Promise<unknown>) => promise.then(() => { throw new Error("expected a failure"); }, (error: DownloadError) => error);

describe("download", () => {
  it("streams to a temporary file with its sha256, following a redirect", async () => {
    const sha256 = createHash("sha256").update(body).digest("hex");
    const got = await download(`${base}/hop`, { tempDir, maxBytes: 1e6, sha256, allowLoopback: true });
    expect(got).toMatchObject({ bytes: body.length, sha256, url: `${base}/lora.safetensors` });
    expect((await readFile(got.path)).equals(body)).toBe(true);
  });

  it("refuses plain http, loopback and private addresses unless loopback is allowed for tests", async () => {
    expect((await fail(download(`${base}/lora.safetensors`, { tempDir, maxBytes: 1e6 }))).code).toBe("bad-url");
    expect((await fail(download(`https://127.0.0.1:1/x`, { tempDir, maxBytes: 1e6 }))).code).toBe("private-address");
    expect((await fail(download(`https://[::1]:1/x`, { tempDir, maxBytes: 1e6 }))).code).toBe("private-address");
    expect((await fail(download(`https://localhost:1/x`, { tempDir, maxBytes: 1e6 }))).code).toBe("private-address");
    expect((await fail(download(`${base}/to-private`, { tempDir, maxBytes: 1e6, allowLoopback: true }))).code).toBe("bad-url"); // http to a non-loopback host
    expect((await fail(download(`${base}/to-private-https`, { tempDir, maxBytes: 1e6, allowLoopback: true }))).code).toBe("private-address");
    expect((await fail(download("ftp://example.com/x", { tempDir, maxBytes: 1e6 }))).code).toBe("bad-url");
    for (const address of ["10.1.2.3", "192.168.0.9", "172.20.0.1", "169.254.169.254", "100.64.0.1", "fd00::1", "fe80::1", "::ffff:10.0.0.1"]) {
      expect(allowedAddress(address, { allowLoopback: true }), address).toBe(false);
    }
    expect(allowedAddress("93.184.216.34", {})).toBe(true);
  });

  it("refuses a file over the cap (declared or streamed), a wrong hash, and says when to retry a 429", async () => {
    expect((await fail(download(`${base}/lora.safetensors`, { tempDir, maxBytes: 10_000, allowLoopback: true }))).code).toBe("too-large");
    expect((await fail(download(`${base}/chunked`, { tempDir, maxBytes: 60_000, allowLoopback: true }))).code).toBe("too-large");
    const wrong = await fail(download(`${base}/lora.safetensors`, { tempDir, maxBytes: 1e6, sha256: "0".repeat(64), allowLoopback: true }));
    expect(wrong.code).toBe("hash-mismatch");
    const busy = await fail(download(`${base}/busy`, { tempDir, maxBytes: 1e6, allowLoopback: true }));
    expect([busy.code, busy.status, busy.retryAfterMs]).toEqual(["http-status", 429, 7000]);
    const left = (await readdir(tempDir)).filter((name) => name.endsWith(".part"));
    expect(left.length).toBe(1); // only the successful download of the first test, which its caller would move
  });
});
