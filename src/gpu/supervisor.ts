// Spawns the configured local workers, each with a fresh random token, waits until each answers /health, and
// restarts one that exits with exponential backoff. The token travels in the environment, never on the command
// line, so `ps` does not show it; the rest of a worker's environment is only what it needs (workerEnvironment),
// and its stdin is a pipe this process holds, so a worker told to watch it ends when the host does, even by kill -9.
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createInterface } from "node:readline";
import type { WorkerBackend } from "./backend.js";
import { createWorkerClient } from "./client.js";
import { FAMILIES } from "../pool/families.js";

export interface WorkerCommand {
  command: string;
  args: string[];
  env?: Record<string, string>;
}

export interface SupervisorOptions {
  /** One entry per local worker: how to start it. See `pythonWorkerCommand`. */
  workers: WorkerCommand[];
  /** The host's environment, of which a worker gets only what `workerEnvironment` lets through. Default process.env. */
  environment?: NodeJS.ProcessEnv;
  /** How long a started worker may take to print its port and answer /health. Default 120 s. */
  startupTimeoutMs?: number;
  /** First restart delay, doubled after each crash up to `maxBackoffMs`. Defaults 1 s and 30 s. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** A worker that stays up this long has its backoff reset. Default 60 s. */
  stableMs?: number;
  /** Job time limit handed to each worker's client. Default 600 s. */
  jobTimeoutMs?: number;
  /** Where worker stderr lines and supervision notes go. Default: console.error. */
  log?: (line: string) => void;
}

export type WorkerState = "starting" | "ready" | "backoff" | "stopped";

export interface WorkerStatus {
  id: string;
  state: WorkerState;
  restarts: number;
  pid: number | undefined;
  /** Where it listens once started; requests need its token, which only the supervisor holds. */
  url: string | undefined;
  lastExit: string | undefined;
}

/** The Python worker of this repository, serving `model` on `device` from the given venv's interpreter. It exits
 *  when its stdin closes (`--exit-with-stdin`): the supervisor holds that pipe, so the worker dies with the host. */
export function pythonWorkerCommand(python: string, device: string, model: string, gates?: string, encoder?: string): WorkerCommand {
  // `model` is a family's name (its default weights), else a local diffusers-format FLUX directory.
  const family = FAMILIES.some((known) => known.name === model) ? ["--family", model] : ["--family", "flux", "--model-path", model];
  return {
    command: python,
    args: ["-m", "autolora_worker", "serve", "--host", "127.0.0.1", "--port", "0", "--device", device, ...family,
      ...(gates ? ["--gates", gates] : []), ...(encoder ? ["--encoder", encoder] : []), "--exit-with-stdin"],
  };
}

/** The host environment variables a worker (or trainer) gets, each for a reason; everything else — chat tokens,
 *  API keys, the token shared with remote workers, cloud credentials — stays in the host. */
const WORKER_ENVIRONMENT: Array<string | RegExp> = [
  // Finding programs and shared libraries (CUDA's are often found through LD_LIBRARY_PATH).
  "PATH", "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH",
  // Home and temporary files: Hugging Face's and torch's caches live under HOME or XDG_CACHE_HOME by default.
  "HOME", "TMPDIR", "TMP", "TEMP", "XDG_CACHE_HOME",
  // The text encoding of what the worker prints.
  "LANG", "LANGUAGE", /^LC_/,
  // The interpreter itself: module paths, unbuffered output, the venv it belongs to.
  /^PYTHON/, "VIRTUAL_ENV",
  // Thread counts and math-library kernels (OpenMP, MKL, oneDNN, OpenBLAS, torch's CPU capability).
  /^OMP_/, /^KMP_/, /^MKL_/, /^ONEDNN_/, /^OPENBLAS_/, "ATEN_CPU_CAPABILITY",
  // Which GPUs, and how torch manages their memory.
  /^CUDA_/, /^NVIDIA_/, "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", /^TORCH_/, /^PYTORCH_/,
  // Hugging Face's cache and offline switches; never HF_TOKEN: a worker loads local files only.
  "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
  // Which proving-ground bundle a worker serves when not told on its command line.
  "AUTOLORA_BUNDLE",
];

/** What a worker process is given: the allowed part of the host's `environment`, then the command's own `env`. */
export function workerEnvironment(environment: NodeJS.ProcessEnv, own: Record<string, string> = {}): Record<string, string> {
  const needed = (name: string) => WORKER_ENVIRONMENT.some((rule) => (typeof rule === "string" ? rule === name : rule.test(name)));
  const allowed = Object.entries(environment).filter((entry): entry is [string, string] => entry[1] !== undefined && needed(entry[0]));
  return { ...Object.fromEntries(allowed), ...own };
}

class SupervisedWorker {
  state: WorkerState = "starting";
  restarts = 0;
  backend: WorkerBackend | undefined;
  url: string | undefined;
  lastExit: string | undefined;
  private child: ChildProcess | undefined;
  private crashesInARow = 0;
  private timers = new Set<NodeJS.Timeout>();
  private readyWaiters: Array<() => void> = [];

  constructor(readonly id: string, private readonly command: WorkerCommand, private readonly options: Required<Omit<SupervisorOptions, "workers">>) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  start(): void {
    if (this.state === "stopped") return;
    this.state = "starting";
    this.backend = undefined;
    this.url = undefined;
    const token = randomBytes(32).toString("hex");
    const child = spawn(this.command.command, this.command.args, {
      env: { ...workerEnvironment(this.options.environment, this.command.env), AUTOLORA_WORKER_TOKEN: token },
      // stdin: a pipe nobody writes to, whose end closes when this process ends (see pythonWorkerCommand).
      stdio: ["pipe", "pipe", "pipe"],
    });
    this.child = child;
    const startup = this.after(this.options.startupTimeoutMs, () => {
      this.options.log(`[${this.id}] did not become healthy within ${this.options.startupTimeoutMs} ms; restarting it`);
      child.kill("SIGKILL");
    });
    createInterface({ input: child.stderr! }).on("line", (line) => this.options.log(`[${this.id}] ${line}`));
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const port = listeningPort(line);
      if (port === undefined || this.child !== child) return;
      this.url = `http://127.0.0.1:${port}`;
      const backend = createWorkerClient({ url: this.url, token, id: this.id, jobTimeoutMs: this.options.jobTimeoutMs });
      void this.waitHealthy(backend, child).then((healthy) => {
        if (!healthy || this.child !== child || this.state === "stopped") return;
        this.clear(startup);
        this.backend = backend;
        this.state = "ready";
        this.after(this.options.stableMs, () => { this.crashesInARow = 0; });
        for (const wake of this.readyWaiters.splice(0)) wake();
      });
    });
    child.on("error", (error) => this.options.log(`[${this.id}] could not start ${this.command.command}: ${error.message}`));
    child.on("exit", (code, signal) => {
      if (this.child !== child) return;
      this.clear(startup);
      this.child = undefined;
      this.backend = undefined;
      this.lastExit = signal ? `killed by ${signal}` : `exited with code ${code}`;
      if (this.state === "stopped") return;
      const delay = Math.min(this.options.maxBackoffMs, this.options.backoffMs * 2 ** this.crashesInARow);
      this.crashesInARow += 1;
      this.restarts += 1;
      this.state = "backoff";
      this.options.log(`[${this.id}] ${this.lastExit}; restarting in ${delay} ms`);
      this.after(delay, () => this.start());
    });
  }

  /** Resolves once the worker is ready (now or after a restart), or false after `timeoutMs`. */
  whenReady(timeoutMs: number): Promise<boolean> {
    if (this.state === "ready") return Promise.resolve(true);
    if (this.state === "stopped") return Promise.resolve(false);
    return new Promise((resolve) => {
      const wake = () => { clearTimeout(timer); resolve(true); };
      const timer = setTimeout(() => {
        this.readyWaiters = this.readyWaiters.filter((waiter) => waiter !== wake);
        resolve(false);
      }, timeoutMs);
      this.readyWaiters.push(wake);
    });
  }

  async stop(): Promise<void> {
    this.state = "stopped";
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    for (const wake of this.readyWaiters.splice(0)) wake();
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.kill("SIGTERM");
    const force = setTimeout(() => child.kill("SIGKILL"), 5_000);
    await exited;
    clearTimeout(force);
  }

  private async waitHealthy(backend: WorkerBackend, child: ChildProcess): Promise<boolean> {
    while (this.child === child && this.state !== "stopped") {
      try {
        await backend.health();
        return true;
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }
    return false;
  }

  private after(ms: number, run: () => void): NodeJS.Timeout {
    const timer = setTimeout(() => { this.timers.delete(timer); run(); }, ms);
    this.timers.add(timer);
    return timer;
  }

  private clear(timer: NodeJS.Timeout): void {
    clearTimeout(timer);
    this.timers.delete(timer);
  }
}

export class WorkerSupervisor {
  private readonly workers: SupervisedWorker[];

  constructor(options: SupervisorOptions) {
    const settings = {
      environment: options.environment ?? process.env,
      startupTimeoutMs: options.startupTimeoutMs ?? 120_000,
      backoffMs: options.backoffMs ?? 1_000,
      maxBackoffMs: options.maxBackoffMs ?? 30_000,
      stableMs: options.stableMs ?? 60_000,
      jobTimeoutMs: options.jobTimeoutMs ?? 600_000,
      log: options.log ?? ((line: string) => console.error(line)),
    };
    this.workers = options.workers.map((command, index) => new SupervisedWorker(`local-${index + 1}`, command, settings));
  }

  /** Start every worker; resolves when all are ready, or rejects naming those not ready within `timeoutMs`. */
  async start(timeoutMs = 120_000): Promise<void> {
    for (const worker of this.workers) worker.start();
    const ready = await Promise.all(this.workers.map((worker) => worker.whenReady(timeoutMs)));
    const late = this.workers.filter((_, index) => !ready[index]);
    if (late.length > 0) {
      throw new Error(`worker(s) ${late.map((w) => `${w.id} (${w.lastExit ?? w.state})`).join(", ")} did not start within ${timeoutMs} ms`);
    }
  }

  /** The workers that are ready now. */
  ready(): WorkerBackend[] {
    return this.workers.flatMap((worker) => (worker.state === "ready" && worker.backend ? [worker.backend] : []));
  }

  /** Resolves when some worker is ready (true) or after `timeoutMs` (false). */
  async whenAnyReady(timeoutMs: number): Promise<boolean> {
    if (this.ready().length > 0) return true;
    const waits = this.workers.map((worker) => worker.whenReady(timeoutMs).then((ready) => ready || Promise.reject()));
    return Promise.any(waits).catch(() => false);
  }

  status(): WorkerStatus[] {
    return this.workers.map(({ id, state, restarts, pid, url, lastExit }) => ({ id, state, restarts, pid, url, lastExit }));
  }

  async stop(): Promise<void> {
    await Promise.all(this.workers.map((worker) => worker.stop()));
  }
}

function listeningPort(line: string): number | undefined {
  try {
    const event = JSON.parse(line) as { event?: string; port?: unknown };
    return event.event === "listening" && typeof event.port === "number" ? event.port : undefined;
  } catch {
    return undefined;
  }
}
