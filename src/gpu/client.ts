// The HTTP client of one worker (src/gpu/worker/autolora_worker/service.py): bearer-token auth, NDJSON progress
// streaming, cancellation and timeouts, every failure mapped to a typed WorkerError.
import { oneByOne, type GenerateOptions, type WorkerBackend } from "./backend.js";
import {
  JobCancelledError, WorkerJobError, WorkerRequestError, WorkerTimeoutError, WorkerUnavailableError,
} from "./errors.js";
import {
  embedManyResultSchema, embedResultSchema, generateRequestSchema, MAX_EMBED_PATHS, judgeRequestSchema, judgeResultSchema, readWorkerEvents, workerHealthSchema,
  type EmbedResult, type GenerateRequest, type JobEndEvent, type JudgeResult, type WorkerHealth,
} from "./protocol.js";

export interface WorkerClientOptions {
  /** Base URL, e.g. http://127.0.0.1:8731 */
  url: string;
  /** The worker's bearer token. Never logged, never part of an error message. */
  token: string;
  /** Name in logs and errors. Default: the URL. */
  id?: string;
  /** Default: the global fetch. Injectable for tests. */
  fetch?: typeof fetch;
  /** Limit on /health, /cancel and a job's first response. Default 10 s. */
  requestTimeoutMs?: number;
  /** Limit on a whole job, from request to job-end. Default 600 s. */
  jobTimeoutMs?: number;
}

export function createWorkerClient(options: WorkerClientOptions): WorkerBackend {
  const base = options.url.replace(/\/+$/, "");
  const id = options.id ?? base;
  const fetchImpl = options.fetch ?? fetch;
  const requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
  const jobTimeoutMs = options.jobTimeoutMs ?? 600_000;
  const headers = { authorization: `Bearer ${options.token}`, "content-type": "application/json" };

  async function call(path: string, init: RequestInit): Promise<Response> {
    try {
      return await fetchImpl(`${base}${path}`, { ...init, headers });
    } catch (error) {
      if (init.signal?.aborted) throw init.signal.reason;
      throw new WorkerUnavailableError(`worker ${id} is not reachable (${describe(error)})`, { cause: error });
    }
  }

  async function refusal(response: Response): Promise<Error> {
    const body = await response.json().catch(() => undefined) as { error?: { code?: string; message?: string } } | undefined;
    const code = body?.error?.code ?? `http-${response.status}`;
    const message = body?.error?.message ?? `${response.status} ${response.statusText}`;
    if (response.status >= 500) return new WorkerUnavailableError(`worker ${id} failed: ${message}`);
    return new WorkerRequestError(code, `worker ${id} refused the request: ${message}`, response.status);
  }

  async function health(signal?: AbortSignal): Promise<WorkerHealth> {
    const timeout = AbortSignal.timeout(requestTimeoutMs);
    const response = await call("/health", { signal: signal ? AbortSignal.any([signal, timeout]) : timeout })
      .catch((error: unknown) => {
        if (timeout.aborted) throw new WorkerUnavailableError(`worker ${id} did not answer /health in ${requestTimeoutMs} ms`);
        throw error;
      });
    if (!response.ok) throw await refusal(response);
    const parsed = workerHealthSchema.safeParse(await response.json().catch(() => undefined));
    if (!parsed.success) throw new WorkerUnavailableError(`worker ${id} sent an invalid /health answer`);
    return parsed.data;
  }

  async function embed(path: string, signal?: AbortSignal): Promise<EmbedResult> {
    // Reading and embedding one file is quick next to sampling, but the worker may be busy with a job first.
    const timeout = AbortSignal.timeout(jobTimeoutMs);
    const response = await call("/embed", {
      method: "POST", body: JSON.stringify({ path }), signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
    }).catch((error: unknown) => {
      if (timeout.aborted) throw new WorkerTimeoutError(`worker ${id} did not embed ${path} within ${Math.round(jobTimeoutMs / 1000)} s`);
      throw error;
    });
    if (!response.ok) throw await refusal(response);
    const parsed = embedResultSchema.safeParse(await response.json().catch(() => undefined));
    if (!parsed.success) throw new WorkerUnavailableError(`worker ${id} sent an invalid /embed answer`);
    return parsed.data;
  }

  async function embedMany(paths: string[], signal?: AbortSignal): Promise<Array<EmbedResult | Error>> {
    const results: Array<EmbedResult | Error> = [];
    for (let start = 0; start < paths.length; start += MAX_EMBED_PATHS) {
      const chunk = paths.slice(start, start + MAX_EMBED_PATHS);
      const timeout = AbortSignal.timeout(jobTimeoutMs);
      const response = await call("/embed", {
        method: "POST", body: JSON.stringify({ paths: chunk }), signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      }).catch((error: unknown) => {
        if (timeout.aborted) throw new WorkerTimeoutError(`worker ${id} did not embed ${chunk.length} files within ${Math.round(jobTimeoutMs / 1000)} s`);
        throw error;
      });
      if (response.status === 400) {
        // A worker from before /embed took `paths`: one file at a time.
        await response.body?.cancel();
        results.push(...await oneByOne({ embed }, chunk, signal));
        continue;
      }
      if (!response.ok) throw await refusal(response);
      const parsed = embedManyResultSchema.safeParse(await response.json().catch(() => undefined));
      if (!parsed.success || parsed.data.results.length !== chunk.length) throw new WorkerUnavailableError(`worker ${id} sent an invalid /embed answer`);
      parsed.data.results.forEach((result, n) => results.push("error" in result
        ? new WorkerRequestError(result.error.code, `worker ${id} refused ${chunk[n]}: ${result.error.message}`, 422) : result));
    }
    return results;
  }

  async function judge(pngs: Buffer[], signal?: AbortSignal): Promise<JudgeResult> {
    const body = judgeRequestSchema.safeParse({ images: pngs.map((png) => png.toString("base64")) });
    if (!body.success) throw new WorkerRequestError("invalid-request", `invalid /judge request: ${body.error.issues[0]!.message}`, 400);
    const timeout = AbortSignal.timeout(jobTimeoutMs); // the evaluator waits for nothing, but the machine may be busy
    const response = await call("/judge", {
      method: "POST", body: JSON.stringify(body.data), signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
    }).catch((error: unknown) => {
      if (timeout.aborted) throw new WorkerTimeoutError(`worker ${id} did not judge ${pngs.length} images within ${Math.round(jobTimeoutMs / 1000)} s`);
      throw error;
    });
    if (!response.ok) throw await refusal(response);
    const parsed = judgeResultSchema.safeParse(await response.json().catch(() => undefined));
    if (!parsed.success || parsed.data.labels.length !== pngs.length) throw new WorkerUnavailableError(`worker ${id} sent an invalid /judge answer`);
    return parsed.data;
  }

  /** POST /reload-gates or /reload-encoder; resolves to the version the worker now serves. */
  async function reload(route: "/reload-gates" | "/reload-encoder", field: "gate_version" | "encoder_version", path: string): Promise<string> {
    // The swap waits for the job in hand, so allow a job's time.
    const response = await call(route, { method: "POST", body: JSON.stringify({ path }), signal: AbortSignal.timeout(jobTimeoutMs) });
    if (!response.ok) throw await refusal(response);
    const answer = await response.json().catch(() => undefined) as Record<string, unknown> | undefined;
    if (typeof answer?.[field] !== "string") throw new WorkerUnavailableError(`worker ${id} sent an invalid ${route} answer`);
    return answer[field] as string;
  }

  async function cancel(jobId: string): Promise<boolean> {
    const response = await call("/cancel", {
      method: "POST", body: JSON.stringify({ job_id: jobId }), signal: AbortSignal.timeout(requestTimeoutMs),
    });
    if (response.status === 404) return false;
    if (!response.ok) throw await refusal(response);
    return true;
  }

  async function generate(request: GenerateRequest, generateOptions: GenerateOptions = {}): Promise<JobEndEvent> {
    const checked = generateRequestSchema.safeParse(request);
    if (!checked.success) {
      const issue = checked.error.issues[0]!;
      throw new WorkerRequestError("invalid-request", `invalid job: ${issue.path.join(".")}: ${issue.message}`, 400);
    }
    const { signal, onEvent } = generateOptions;
    if (signal?.aborted) throw new JobCancelledError(`job ${request.job_id} was cancelled before it started`);
    const controller = new AbortController();
    let stopped: "cancelled" | "timeout" | undefined;
    const stop = (why: "cancelled" | "timeout") => {
      if (stopped) return;
      stopped = why;
      controller.abort();
      // Closing the stream also stops the worker at its next step; /cancel makes it stop even while it waits.
      cancel(request.job_id).catch(() => undefined);
    };
    const timer = setTimeout(() => stop("timeout"), jobTimeoutMs);
    const onAbort = () => stop("cancelled");
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const response = await call("/generate", { method: "POST", body: JSON.stringify(checked.data), signal: controller.signal });
      if (!response.ok || !response.body) throw await refusal(response);
      for await (const event of readWorkerEvents(response.body)) {
        if (event.job_id !== request.job_id) continue;
        onEvent?.(event);
        if (event.type === "job-end") return event;
        if (event.type === "job-error") {
          if (event.code === "job-cancelled") throw new JobCancelledError(`job ${request.job_id} was cancelled`);
          throw new WorkerJobError(event.code, event.message);
        }
      }
      throw new WorkerUnavailableError(`worker ${id} closed job ${request.job_id}'s stream before the job ended`);
    } catch (error) {
      if (stopped === "cancelled") throw new JobCancelledError(`job ${request.job_id} was cancelled`);
      if (stopped === "timeout") {
        throw new WorkerTimeoutError(`job ${request.job_id} ran past the ${Math.round(jobTimeoutMs / 1000)} s limit on worker ${id}`);
      }
      if (error instanceof TypeError || (error as Error).name === "AbortError") {
        throw new WorkerUnavailableError(`worker ${id} went away during job ${request.job_id} (${describe(error)})`, { cause: error });
      }
      throw error;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
  }

  return {
    id, health, generate, embed, embedMany, judge, cancel,
    reloadGates: (path: string) => reload("/reload-gates", "gate_version", path),
    reloadEncoder: (path: string) => reload("/reload-encoder", "encoder_version", path),
  };
}

function describe(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? (error instanceof Error ? error.message : String(error));
}
