// Polite HTTP for crawl sources: JSON GETs retried with exponential backoff on 429 and 5xx (honouring
// Retry-After, in seconds or as a date) and on network errors, so a rate-limited or flaky API slows a crawl down
// instead of failing it. The clock and fetch are injectable so tests need no real waiting.
import { redact, retryAfterMs } from "../pool/download.js";

export interface RetryOptions {
  /** Attempts after the first. Default 4. */
  retries?: number;
  /** First backoff when the server gives no Retry-After. Default 1 s, doubling. */
  baseDelayMs?: number;
  /** Longest single wait; a longer Retry-After fails the request instead. Default 120 s. */
  maxDelayMs?: number;
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  fetch?: typeof fetch;
  /** Told about each retry, e.g. for the crawl's log. */
  onRetry?: (url: string, reason: string, waitMs: number) => void;
}

export class SourceHttpError extends Error {
  override readonly name = "SourceHttpError";
  constructor(message: string, readonly status: number | undefined) {
    super(message);
  }
}

export interface JsonResponse<T> {
  body: T;
  headers: Headers;
  /** Attempts it took (1 = no retry). */
  attempts: number;
}

export async function getJson<T = unknown>(url: string, options: RetryOptions & { headers?: Record<string, string>; signal?: AbortSignal } = {}): Promise<JsonResponse<T>> {
  const retries = options.retries ?? 4;
  const sleep = options.sleep ?? wait;
  const doFetch = options.fetch ?? fetch;
  for (let attempt = 0; ; attempt++) {
    let retryAfter: number | undefined;
    let reason: string;
    try {
      const response = await doFetch(url, { headers: { accept: "application/json", ...options.headers }, signal: options.signal, redirect: "follow" });
      if (response.ok) {
        const text = await response.text();
        try {
          return { body: JSON.parse(text) as T, headers: response.headers, attempts: attempt + 1 };
        } catch {
          throw new SourceHttpError(`${redact(url)} did not answer JSON`, response.status);
        }
      }
      await response.body?.cancel();
      if (response.status !== 429 && response.status < 500) {
        throw new SourceHttpError(`${redact(url)} answered HTTP ${response.status}`, response.status);
      }
      retryAfter = retryAfterMs(response.headers.get("retry-after"));
      reason = `HTTP ${response.status}`;
    } catch (error) {
      if (error instanceof SourceHttpError || options.signal?.aborted) throw error;
      reason = error instanceof Error ? error.message : String(error);
    }
    if (attempt >= retries) throw new SourceHttpError(`${redact(url)} still failing after ${attempt + 1} attempts (${reason})`, undefined);
    const delay = retryAfter ?? (options.baseDelayMs ?? 1000) * 2 ** attempt;
    if (delay > (options.maxDelayMs ?? 120_000)) {
      throw new SourceHttpError(`${redact(url)} asks to wait ${Math.round(delay / 1000)} s (${reason}); try the crawl later`, 429);
    }
    options.onRetry?.(url, reason, delay);
    await sleep(delay, options.signal);
  }
}

function wait(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
  });
}
