// Downloads of LoRAs named by URL (admins' /lora add, crawl sources): https only, no private or loopback
// address (also after a redirect), a size cap, the source's sha256 checked, and nothing left behind on failure.
import { createHash } from "node:crypto";
import { mkdtemp, readdir, readFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { isIP, type AddressInfo } from "node:net";
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
    const redirect = new URL(request.url ?? "/", "http://x").searchParams.get("to");
    if (redirect) return void response.writeHead(302, { location: redirect }).end();
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

// One address inside each special-purpose range (IANA's IPv4 and IPv6 registries, multicast, reserved space),
// and the range a refusal names. An address is downloaded from only when it is globally routable.
const SPECIAL: Array<[string, string]> = [
  ["0.1.2.3", "0.0.0.0/8"], ["10.1.2.3", "10.0.0.0/8"], ["100.64.0.1", "100.64.0.0/10"], ["100.127.255.254", "100.64.0.0/10"],
  ["127.0.0.2", "127.0.0.0/8"], ["169.254.169.254", "169.254.0.0/16"], ["172.16.0.1", "172.16.0.0/12"],
  ["172.31.255.255", "172.16.0.0/12"], ["192.0.0.9", "192.0.0.0/24"], ["192.0.2.1", "192.0.2.0/24"],
  ["192.31.196.1", "192.31.196.0/24"], ["192.52.193.1", "192.52.193.0/24"], ["192.88.99.1", "192.88.99.0/24"],
  ["192.168.1.1", "192.168.0.0/16"], ["192.175.48.1", "192.175.48.0/24"], ["198.18.0.1", "198.18.0.0/15"],
  ["198.19.255.255", "198.18.0.0/15"], ["198.51.100.7", "198.51.100.0/24"], ["203.0.113.9", "203.0.113.0/24"],
  ["224.0.0.251", "224.0.0.0/4"], ["239.255.255.250", "224.0.0.0/4"], ["240.0.0.1", "240.0.0.0/4"],
  ["255.255.255.255", "240.0.0.0/4"],
  ["::", "::/128"], ["::1", "::1/128"], ["::127.0.0.1", "::/96"], ["::8.8.8.8", "::/96"],
  ["::ffff:10.0.0.1", "10.0.0.0/8"], ["::ffff:127.0.0.1", "127.0.0.0/8"], ["::ffff:169.254.169.254", "169.254.0.0/16"],
  ["64:ff9b::10.0.0.1", "NAT64 of private use"], ["64:ff9b::127.0.0.1", "NAT64 of loopback"],
  ["64:ff9b::192.168.0.1", "NAT64 of private use"], ["64:ff9b:1::a00:1", "64:ff9b:1::/48"], ["100::1", "100::/64"],
  ["100:0:0:1::1", "100:0:0:1::/64"], ["2001::1", "2001::/32"], ["2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::/32"],
  ["2001:1::1", "2001::/23"], ["2001:2::1", "2001:2::/48"], ["2001:3::1", "2001::/23"], ["2001:4:112::1", "2001::/23"],
  ["2001:10::1", "2001:10::/28"], ["2001:20::1", "2001:20::/28"], ["2001:30::1", "2001::/23"], ["2001:db8::1", "2001:db8::/32"],
  ["2002:7f00:1::1", "2002::/16"], ["2002:a00:1::1", "2002::/16"], ["2620:4f:8000::1", "2620:4f:8000::/48"],
  ["3fff::1", "3fff::/20"], ["5f00::1", "5f00::/16"], ["fc00::1", "fc00::/7"], ["fd12:3456::1", "fc00::/7"],
  ["fe80::1", "fe80::/10"], ["febf::1", "fe80::/10"], ["fec0::1", "fec0::/10"], ["ff02::1", "ff00::/8"],
  ["ff05::1:3", "ff00::/8"], ["1::1", "2000::/3"], ["4000::1", "2000::/3"], ["e000::1", "2000::/3"],
];
const PUBLIC = [
  "93.184.216.34", "8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.0", "172.15.255.255", "172.32.0.0",
  "192.0.1.1", "198.17.255.255", "198.20.0.0", "223.255.255.255",
  "::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "2606:4700:4700::1111", "2001:4860:4860::8888", "2001:200::1", "2a00:1450:4001:82a::200e",
];
const inUrl = (address: string) => (isIP(address) === 6 ? `[${address}]` : address);
const resolvesTo = (...addresses: string[]) => async () => addresses.map((address) => ({ address, family: isIP(address) }));

describe("which addresses a download may reach", () => {
  it.each(SPECIAL)("refuses %s (%s), as a literal URL and as what a host name resolves to", async (address, range) => {
    expect(allowedAddress(address, {}), address).toBe(false);
    const literal = await fail(download(`https://${inUrl(address)}/lora.safetensors`, { tempDir, maxBytes: 1e6 }));
    expect([literal.code, literal.message]).toEqual(["private-address", expect.stringContaining(range)]);
    const named = await fail(download("https://lora.example/x.safetensors", { tempDir, maxBytes: 1e6, lookup: resolvesTo("93.184.216.34", address) }));
    expect([named.code, named.message]).toEqual(["private-address", expect.stringContaining(range)]);
  });

  it.each(PUBLIC)("allows the globally routable %s", (address) => {
    expect(allowedAddress(address, {})).toBe(true);
  });

  it("reads every spelling of an IPv4 address the URL parser accepts, and allows loopback only to tests", async () => {
    for (const host of ["0x7f.1", "2130706433", "127.1", "0177.0.0.1", "[::ffff:7f00:1]", "[::127.0.0.1]", "[::7f00:1]", "localhost"]) {
      expect((await fail(download(`https://${host}/x`, { tempDir, maxBytes: 1e6 }))).code, host).toBe("private-address");
    }
    expect(allowedAddress("127.0.0.1", { allowLoopback: true })).toBe(true);
    expect(allowedAddress("::1", { allowLoopback: true })).toBe(true);
    expect(allowedAddress("::127.0.0.1", { allowLoopback: true })).toBe(false); // IPv4-compatible is not loopback
    expect(allowedAddress("10.0.0.1", { allowLoopback: true })).toBe(false);
  });

  it("refuses a redirect to any special address, named or literal", async () => {
    const options = { tempDir, maxBytes: 1e6, allowLoopback: true, lookup: resolvesTo("10.9.8.7") };
    for (const to of ["https://[::127.0.0.1]/x", "https://[64:ff9b::a00:1]/x", "https://[::ffff:a9fe:a9fe]/x", "https://internal.example/x"]) {
      const refused = await fail(download(`${base}/redirect?to=${encodeURIComponent(to)}`, options));
      expect(refused.code, to).toBe("private-address");
    }
    expect((await fail(download(`${base}/redirect?to=${encodeURIComponent("http://10.0.0.1/x")}`, options))).code).toBe("bad-url");
  });

  it("connects to the very address it checked: a host name is looked up once per connection", async () => {
    // A rebinding resolver: a harmless answer first, a private one on any later look-up.
    let lookups = 0;
    const rebinding = async () => [{ address: lookups++ === 0 ? "127.0.0.1" : "10.0.0.1", family: 4 }];
    const port = (server.address() as AddressInfo).port;
    const got = await download(`http://localhost:${port}/lora.safetensors`, { tempDir, maxBytes: 1e6, allowLoopback: true, lookup: rebinding });
    expect(got.bytes).toBe(body.length);
    expect(lookups).toBe(1);
    // Plain http is for loopback test servers only: not to another name, nor to a "localhost" that is not loopback.
    const remote = await fail(download(`http://lora.example:${port}/x`, { tempDir, maxBytes: 1e6, allowLoopback: true, lookup: resolvesTo("127.0.0.1") }));
    expect(remote.code).toBe("bad-url");
    const rebound = await fail(download(`http://localhost:${port}/x`, { tempDir, maxBytes: 1e6, allowLoopback: true, lookup: resolvesTo("8.8.8.8") }));
    expect(rebound.code).toBe("bad-url");
  });
});
