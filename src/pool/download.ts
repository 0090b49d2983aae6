// Downloading a LoRA someone pointed us at (an admin's `/lora add url:…`, a crawl source): https only, only
// globally routable addresses (see addresses.ts; checked on the address actually connected to, so DNS tricks do
// not get past it, and again on every redirect), a size cap, streamed to a temporary file with its sha256
// computed on the way.
import { createHash, randomUUID } from "node:crypto";
import type { LookupAddress } from "node:dns";
import { lookup as dnsLookup } from "node:dns/promises";
import { createWriteStream } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { isIP, type LookupFunction } from "node:net";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { Transform } from "node:stream";
import { isLoopback, specialRange } from "./addresses.js";

export type DownloadErrorCode = "bad-url" | "private-address" | "too-large" | "http-status" | "hash-mismatch" | "too-many-redirects" | "network";

export class DownloadError extends Error {
  override readonly name = "DownloadError";
  constructor(readonly code: DownloadErrorCode, message: string, readonly status?: number, readonly retryAfterMs?: number) {
    super(message);
  }
}

export interface DownloadOptions {
  /** Folder for the temporary file (created if missing). */
  tempDir: string;
  /** Refuse anything larger. */
  maxBytes: number;
  /** The sha256 (hex) the source says the file has; a different one is refused. */
  sha256?: string;
  /** Allow loopback addresses, and http:// to them: only for tests against local fakes. Default false. */
  allowLoopback?: boolean;
  /** How a host name becomes addresses. Default: the system resolver (node:dns lookup); tests give their own. */
  lookup?: (hostname: string) => Promise<LookupAddress[]>;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** Default 5. */
  maxRedirects?: number;
}

export interface Downloaded {
  path: string;
  bytes: number;
  sha256: string;
  /** The URL the bytes came from, after redirects. */
  url: string;
}

/** Fetch `url` to a temporary file; the caller moves or deletes it. Throws DownloadError, leaving no file behind. */
export async function download(url: string, options: DownloadOptions): Promise<Downloaded> {
  await mkdir(options.tempDir, { recursive: true });
  const path = join(options.tempDir, `download-${randomUUID()}.part`);
  let current = url;
  try {
    for (let hop = 0; hop <= (options.maxRedirects ?? 5); hop++) {
      const response = await get(current, options);
      const status = response.statusCode ?? 0;
      if (status >= 300 && status < 400 && response.headers.location) {
        response.resume();
        current = new URL(response.headers.location, current).href;
        continue;
      }
      if (status !== 200) {
        response.resume();
        const retryAfter = retryAfterMs(response.headers["retry-after"]);
        throw new DownloadError("http-status", `${redact(current)} answered HTTP ${status}`, status, retryAfter);
      }
      const declared = Number(response.headers["content-length"] ?? NaN);
      if (declared > options.maxBytes) {
        response.destroy();
        throw new DownloadError("too-large", `${redact(current)} is ${declared} bytes; the limit is ${options.maxBytes}`);
      }
      const hash = createHash("sha256");
      let bytes = 0;
      const counter = new Transform({
        transform(chunk: Buffer, _encoding, done) {
          bytes += chunk.length;
          if (bytes > options.maxBytes) return done(new DownloadError("too-large", `${redact(current)} is over the ${options.maxBytes}-byte limit`));
          hash.update(chunk);
          done(null, chunk);
        },
      });
      await pipeline(response, counter, createWriteStream(path), { signal: options.signal });
      const sha256 = hash.digest("hex");
      if (options.sha256 && options.sha256.toLowerCase() !== sha256) {
        throw new DownloadError("hash-mismatch", `${redact(current)} has sha256 ${sha256.slice(0, 16)}…, but the source says ${options.sha256.toLowerCase().slice(0, 16)}…`);
      }
      return { path, bytes, sha256, url: current };
    }
    throw new DownloadError("too-many-redirects", `${redact(url)} redirected more than ${options.maxRedirects ?? 5} times`);
  } catch (error) {
    await rm(path, { force: true });
    if (error instanceof DownloadError) throw error;
    if ((error as { name?: string }).name === "AbortError") throw error;
    throw new DownloadError("network", `could not download ${redact(current)}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

function get(url: string, options: DownloadOptions): Promise<IncomingMessage> {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new DownloadError("bad-url", `${JSON.stringify(url.slice(0, 200))} is not a URL`);
  }
  const host = parsed.hostname.replace(/^\[|\]$/g, "");
  // Plain http only to a loopback test server, named as such; what "localhost" resolves to is checked below.
  const plainHttp = parsed.protocol === "http:" && options.allowLoopback === true && (host === "localhost" || isLoopback(host));
  if (parsed.protocol !== "https:" && !plainHttp) throw new DownloadError("bad-url", `only https:// URLs are downloaded, not ${redact(url)}`);
  if (parsed.username || parsed.password) throw new DownloadError("bad-url", "URLs with a user name or password are refused");
  /** Why the socket may not go to `address` (what `hostname` resolved to, if it is a name), or undefined. */
  const refusal = (address: string, hostname?: string): DownloadError | undefined => {
    if (plainHttp && !isLoopback(address)) return new DownloadError("bad-url", `only https:// URLs are downloaded, not ${redact(url)}`);
    if (allowedAddress(address, options)) return undefined;
    const where = `${hostname ? `${hostname} resolves to ${address}, ` : `${address} is `}in ${specialRange(address)}`;
    return new DownloadError("private-address", `${where}: only public addresses are downloaded from`);
  };
  // A literal address is connected to as it is, without a look-up.
  const literal = isIP(host) ? refusal(host) : undefined;
  if (literal) throw literal;
  // The socket connects to the addresses this returns, so the addresses checked are the ones used: a name that
  // answers differently the next time (DNS rebinding) is never asked again for this connection.
  const lookup: LookupFunction = (hostname, lookupOptions, callback) => {
    (options.lookup ?? systemLookup)(hostname).then((found) => {
      const addresses = found.filter((address) => !lookupOptions.family || address.family === lookupOptions.family);
      if (addresses.length === 0) return callback(new DownloadError("network", `${hostname} has no address`), "", 4);
      const refused = addresses.map((address) => refusal(address.address, hostname)).find(Boolean);
      if (refused) return callback(refused, "", 4);
      if (lookupOptions.all) return callback(null, addresses);
      callback(null, addresses[0]!.address, addresses[0]!.family);
    }, (error: NodeJS.ErrnoException) => callback(error, "", 4));
  };
  const request = parsed.protocol === "https:" ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    // A connection of its own (no agent pool), so no socket checked under other options is ever reused.
    const outgoing = request(parsed, {
      method: "GET", headers: { "user-agent": "autolora-bot", ...options.headers }, signal: options.signal, timeout: 30_000,
      lookup, agent: false,
    }, resolve);
    outgoing.on("timeout", () => outgoing.destroy(new Error("no answer within 30 s")));
    outgoing.on("error", reject);
    outgoing.end();
  });
}

function systemLookup(hostname: string): Promise<LookupAddress[]> {
  return dnsLookup(hostname, { all: true, verbatim: true });
}

/** Globally routable addresses only (loopback too when allowed for tests). */
export function allowedAddress(address: string, options: { allowLoopback?: boolean }): boolean {
  return specialRange(address) === undefined || (options.allowLoopback === true && isLoopback(address));
}

/** Retry-After as milliseconds: delta-seconds or an HTTP date. */
export function retryAfterMs(header: string | string[] | null | undefined, now = Date.now()): number | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  if (!value?.trim()) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** A URL for messages: without its query string, which may hold a token. */
export function redact(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.origin}${parsed.pathname}${parsed.search ? "?…" : ""}`;
  } catch {
    return "(bad URL)";
  }
}
