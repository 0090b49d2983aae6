// The scheduler's memory, one JSON file under the data folder: per job its last run and outcome, per source its
// resume cursor and every candidate it has dealt with. Written atomically (temp file + rename) after each change,
// so a crash loses at most the item in hand. A lock file per job keeps two processes (`autolora serve` and a
// manual `autolora crawl`) from running the same job at once.
import { mkdir, open, readFile, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { processAlive } from "../process-alive.js";

export interface SeenCandidate {
  status: "added" | "exists" | "refused";
  at: string;
  /** Why it was refused (hash mismatch, too large, not a LoRA, …). */
  reason?: string;
  /** The LoRA's sha256 once ingested. */
  lora?: string;
}

export interface SourceState {
  /** Where an interrupted crawl resumes; absent when the last crawl reached the end (or its newest-first limit). */
  cursor?: string;
  seen: Record<string, SeenCandidate>;
}

export interface JobState {
  lastRun?: string;
  lastFinished?: string;
  lastOutcome?: "ok" | "failed" | "cancelled";
  lastError?: string;
  /** A short summary of the last run, e.g. "52 added, 3 refused". */
  lastSummary?: string;
  /** Retrain: LoRAs crawls have added since it last ran. */
  pendingLoras?: number;
}

export interface SchedulerState {
  jobs: Record<string, JobState>;
  sources: Record<string, SourceState>;
}

export class JobBusyError extends Error {
  override readonly name = "JobBusyError";
  readonly code = "job-busy";
}

export class StateFile {
  private chain: Promise<unknown> = Promise.resolve();

  constructor(readonly path: string) {}

  async read(): Promise<SchedulerState> {
    try {
      const parsed = JSON.parse(await readFile(this.path, "utf8")) as Partial<SchedulerState>;
      return { jobs: parsed.jobs ?? {}, sources: parsed.sources ?? {} };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return { jobs: {}, sources: {} };
      throw new Error(`the scheduler state ${this.path} is unreadable (${error instanceof Error ? error.message : String(error)}); move it aside to start afresh`);
    }
  }

  /** Change the state and write it, one change at a time. */
  update(change: (state: SchedulerState) => void): Promise<SchedulerState> {
    const next = this.chain.then(async () => {
      const state = await this.read();
      change(state);
      await mkdir(dirname(this.path), { recursive: true });
      const temporary = `${this.path}.${process.pid}.tmp`;
      await writeFile(temporary, JSON.stringify(state));
      await rename(temporary, this.path);
      return state;
    });
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** Hold `job`'s lock while `work` runs; JobBusyError if another run (here or in another process) holds it. */
  async exclusive<T>(job: string, work: () => Promise<T>): Promise<T> {
    const lock = join(dirname(this.path), `${job}.lock`);
    await mkdir(dirname(lock), { recursive: true });
    const handle = await open(lock, "wx").catch(async (error: NodeJS.ErrnoException) => {
      if (error.code !== "EEXIST") throw error;
      const holder = Number((await readFile(lock, "utf8").catch(() => "")).trim());
      if (holder && holder !== process.pid && processAlive(holder)) throw new JobBusyError(`${job} is already running (process ${holder})`);
      if (holder === process.pid) throw new JobBusyError(`${job} is already running`);
      await rm(lock, { force: true }); // left by a process that died
      return open(lock, "wx");
    });
    try {
      await handle.writeFile(String(process.pid));
      await handle.close();
      return await work();
    } finally {
      await rm(lock, { force: true });
    }
  }
}
