// Downloading a LoRA someone pointed us at (an admin's `/lora add url:…`, a crawl source): https only, no
// private or loopback addresses (checked on the address actually connected to, so DNS tricks do not get past
// it, and again on every redirect), a size cap, streamed to a temporary file with its sha256 computed on the way.
import { createHash, randomUUID } from "node:crypto";
import { lookup as dnsLookup, type LookupAddress } from "node:dns";
import { createWriteStream } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { isIP } from "node:net";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { Transform } from "node:stream";

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
  /** Allow http:// and loopback addresses: only for tests against local fakes. Default false. */
  allowLoopback?: boolean;
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
  const loopbackHttp = parsed.protocol === "http:" && options.allowLoopback && (host === "localhost" || host === "::1" || /^127\./.test(host));
  if (parsed.protocol !== "https:" && !loopbackHttp) throw new DownloadError("bad-url", `only https:// URLs are downloaded, not ${redact(url)}`);
  if (parsed.username || parsed.password) throw new DownloadError("bad-url", "URLs with a user name or password are refused");
  if (isIP(host) && !allowedAddress(host, options)) {
    throw new DownloadError("private-address", `${parsed.hostname} is a private or local address`);
  }
  const request = parsed.protocol === "https:" ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const outgoing = request(parsed, {
      method: "GET", headers: { "user-agent": "autolora-bot", ...options.headers }, signal: options.signal, timeout: 30_000,
      // Check the address the socket will really use.
      lookup: (hostname, lookupOptions, callback) => {
        dnsLookup(hostname, { ...lookupOptions, all: true }, (error, addresses) => {
          if (error) return callback(error, "", 4);
          const list = addresses as LookupAddress[];
          const bad = list.find((address) => !allowedAddress(address.address, options));
          if (bad) return callback(new DownloadError("private-address", `${hostname} resolves to a private or local address (${bad.address})`), "", 4);
          if ((lookupOptions as { all?: boolean }).all) return (callback as unknown as (error: null, addresses: LookupAddress[]) => void)(null, list);
          callback(null, list[0]!.address, list[0]!.family);
        });
      },
    }, resolve);
    outgoing.on("timeout", () => outgoing.destroy(new Error("no answer within 30 s")));
    outgoing.on("error", reject);
    outgoing.end();
  });
}

/** Public unicast addresses only (loopback too when allowed for tests). */
export function allowedAddress(address: string, options: { allowLoopback?: boolean }): boolean {
  const v4 = /^(?:::ffff:)?(\d+)\.(\d+)\.(\d+)\.(\d+)$/i.exec(address);
  if (v4) {
    const [a, b] = [Number(v4[1]), Number(v4[2])];
    if (a === 127) return options.allowLoopback === true;
    return !(a === 0 || a === 10 || (a === 100 && b >= 64 && b <= 127) || (a === 169 && b === 254) || (a === 172 && b >= 16 && b <= 31)
      || (a === 192 && b === 168) || (a === 192 && b === 0) || (a === 198 && (b === 18 || b === 19)) || a >= 224);
  }
  const v6 = address.toLowerCase();
  if (v6 === "::1") return options.allowLoopback === true;
  return !(v6 === "::" || v6.startsWith("fc") || v6.startsWith("fd") || v6.startsWith("fe8") || v6.startsWith("fe9")
    || v6.startsWith("fea") || v6.startsWith("feb") || v6.startsWith("ff") || v6.startsWith("::ffff:"));
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
