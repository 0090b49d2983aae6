// One crawl of one source: page through what it lists (newest first), and for each candidate not dealt with
// before, download it (https, size cap, the source's sha256), validate and ingest it. Every outcome is recorded
// as it happens and the cursor after each page, so a crash resumes where it stopped without duplicates — and
// ingest is atomic and idempotent by content, so nothing is ever half in the pool.
import { rm, stat } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { download, DownloadError, type Downloaded } from "../pool/download.js";
import type { IngestMetadata, IngestResult } from "../pool/ingest.js";
import { InvalidLoraFileError } from "../pool/safetensors.js";
import { sha256File } from "../pool/store.js";
import type { CrawlCandidate, CrawlSource } from "./source.js";
import type { StateFile } from "./state.js";

export interface CrawlOptions {
  state: StateFile;
  /** Ingest a checked local file into the pool (the host's ingestLora with its worker). */
  ingest: (path: string, metadata: IngestMetadata) => Promise<IngestResult>;
  tempDir: string;
  maxBytes: number;
  /** Stop after this many new candidates (added, already there or refused). Default: no limit. */
  limit?: number;
  /** Allow http:// and loopback downloads: only for tests against local fakes. */
  allowLoopback?: boolean;
  /** Download attempts on 429/5xx/network errors. Default 4 retries. */
  retries?: number;
  sleep?: (ms: number) => Promise<void>;
  signal?: AbortSignal;
  log?: (line: string) => void;
}

export interface CrawlReport {
  source: string;
  pages: number;
  listed: number;
  added: number;
  existed: number;
  /** Dealt with in an earlier crawl. */
  skipped: number;
  refused: Array<{ key: string; reason: string }>;
  /** Failed for now (network, server errors); tried again next crawl. */
  failed: Array<{ key: string; reason: string }>;
  bytes: number;
  /** Where the time went. */
  timings: { listing_ms: number; download_ms: number; ingest_ms: number; total_ms: number };
  /** True when the source had no more pages (rather than the limit being reached). */
  reachedEnd: boolean;
}

export async function crawl(source: CrawlSource, options: CrawlOptions): Promise<CrawlReport> {
  const started = performance.now();
  const report: CrawlReport = {
    source: source.name, pages: 0, listed: 0, added: 0, existed: 0, skipped: 0, refused: [], failed: [], bytes: 0,
    timings: { listing_ms: 0, download_ms: 0, ingest_ms: 0, total_ms: 0 }, reachedEnd: false,
  };
  const log = options.log ?? (() => undefined);
  const initial = (await options.state.read()).sources[source.name];
  let cursor = initial?.cursor;
  const seen = new Set(Object.keys(initial?.seen ?? {}));
  if (cursor) log(`[crawl ${source.name}] resuming an interrupted crawl`);
  let handled = 0;
  for (;;) {
    options.signal?.throwIfAborted();
    const listing = performance.now();
    const page = await source.page(cursor, options.signal);
    report.timings.listing_ms += performance.now() - listing;
    report.pages += 1;
    report.listed += page.candidates.length;
    for (const candidate of page.candidates) {
      if (seen.has(candidate.key)) {
        report.skipped += 1;
        continue;
      }
      if (options.limit !== undefined && handled >= options.limit) {
        // Keep the cursor of this page: the next crawl resumes here, skipping what this one did.
        await options.state.update((state) => { state.sources[source.name] = { ...sourceState(state, source.name), cursor }; });
        return finish(report, started);
      }
      options.signal?.throwIfAborted();
      handled += 1;
      const outcome = await fetchAndIngest(source, candidate, options, report);
      if (outcome) {
        seen.add(candidate.key);
        await options.state.update((state) => { sourceState(state, source.name).seen[candidate.key] = outcome; });
      }
    }
    cursor = page.next;
    await options.state.update((state) => {
      const entry = sourceState(state, source.name);
      if (cursor) entry.cursor = cursor;
      else delete entry.cursor;
    });
    if (!cursor) {
      report.reachedEnd = true;
      return finish(report, started);
    }
    log(`[crawl ${source.name}] page ${report.pages}: ${report.added} added, ${report.refused.length} refused so far`);
  }
}

function sourceState(state: Awaited<ReturnType<StateFile["read"]>>, name: string) {
  return (state.sources[name] ??= { seen: {} });
}

function finish(report: CrawlReport, started: number): CrawlReport {
  report.timings.total_ms = performance.now() - started;
  for (const key of Object.keys(report.timings) as Array<keyof CrawlReport["timings"]>) report.timings[key] = Math.round(report.timings[key]);
  return report;
}

/** The candidate's outcome to remember, or undefined for a failure worth retrying next crawl. */
async function fetchAndIngest(source: CrawlSource, candidate: CrawlCandidate, options: CrawlOptions, report: CrawlReport) {
  const at = new Date().toISOString();
  const refuse = (reason: string) => {
    report.refused.push({ key: candidate.key, reason });
    options.log?.(`[crawl ${source.name}] refused ${candidate.name} (${candidate.key}): ${reason}`);
    return { status: "refused" as const, at, reason };
  };
  if (candidate.bytes !== undefined && candidate.bytes > options.maxBytes) {
    return refuse(`the source says it is ${candidate.bytes} bytes; the limit is ${options.maxBytes}`);
  }
  let file: Downloaded;
  const downloading = performance.now();
  try {
    file = candidate.url.startsWith("file:") ? await localFile(candidate, options) : await downloadWithRetries(source, candidate, options);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    if (error instanceof DownloadError && ["bad-url", "private-address", "too-large", "hash-mismatch", "too-many-redirects"].includes(error.code)) return refuse(reason);
    if (error instanceof DownloadError && error.status !== undefined && error.status >= 400 && error.status < 500 && error.status !== 429) return refuse(reason);
    if ((error as { name?: string }).name === "AbortError" || options.signal?.aborted) throw error;
    report.failed.push({ key: candidate.key, reason });
    options.log?.(`[crawl ${source.name}] could not fetch ${candidate.name}; will try again next crawl: ${reason}`);
    return undefined;
  } finally {
    report.timings.download_ms += performance.now() - downloading;
  }
  const ingesting = performance.now();
  try {
    const result = await options.ingest(file.path, {
      name: candidate.name, source: source.name, url: candidate.page ?? candidate.url, tags: candidate.tags,
      trigger_words: candidate.triggerWords, captions: candidate.captions, license: candidate.license, nsfw: candidate.nsfw,
    });
    report.bytes += file.bytes;
    if (result.status === "added") report.added += 1;
    else report.existed += 1;
    return { status: result.status, at, lora: result.lora.id };
  } catch (error) {
    if (error instanceof InvalidLoraFileError) return refuse(error.message);
    throw error; // the worker or the index failed: the crawl stops, and resumes at this candidate
  } finally {
    report.timings.ingest_ms += performance.now() - ingesting;
    if (!candidate.url.startsWith("file:")) await rm(file.path, { force: true });
  }
}

async function downloadWithRetries(source: CrawlSource, candidate: CrawlCandidate, options: CrawlOptions): Promise<Downloaded> {
  const retries = options.retries ?? 4;
  for (let attempt = 0; ; attempt++) {
    try {
      return await download(candidate.url, {
        tempDir: options.tempDir, maxBytes: options.maxBytes, sha256: candidate.sha256, allowLoopback: options.allowLoopback,
        headers: source.downloadHeaders?.(candidate), signal: options.signal,
      });
    } catch (error) {
      const status = error instanceof DownloadError ? error.status : undefined;
      const transient = error instanceof DownloadError && (error.code === "network" || status === 429 || (status !== undefined && status >= 500));
      if (!transient || attempt >= retries) throw error;
      const wait = (error as DownloadError).retryAfterMs ?? 1000 * 2 ** attempt;
      if (wait > 120_000) throw error;
      options.log?.(`[crawl ${source.name}] ${candidate.name}: ${(error as Error).message}; retrying in ${Math.ceil(wait / 1000)} s`);
      await (options.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms))))(wait);
    }
  }
}

/** A local folder's file: no download, but the same size and hash checks. */
async function localFile(candidate: CrawlCandidate, options: CrawlOptions): Promise<Downloaded> {
  const path = fileURLToPath(candidate.url);
  const { size } = await stat(path);
  if (size > options.maxBytes) throw new DownloadError("too-large", `${path} is ${size} bytes; the limit is ${options.maxBytes}`);
  const sha256 = await sha256File(path);
  if (candidate.sha256 && candidate.sha256.toLowerCase() !== sha256) throw new DownloadError("hash-mismatch", `${path} does not have the expected sha256`);
  return { path, bytes: size, sha256, url: candidate.url };
}
