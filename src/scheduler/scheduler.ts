// The scheduler: named jobs (crawl, index maintenance, …) on node-cron schedules from the config, or run by hand.
// A job never overlaps itself: node-cron skips a tick while the previous run is busy, and a lock file in the
// state folder refuses a second run from anywhere (a manual `autolora crawl` while `serve` crawls). Each run's
// start, end, outcome and summary go to the state file, so `/pool status` and a restart know what happened last.
// A `local` job (following model promotions, say) is every process's own: it takes no lock, leaves no record, and
// logs only when it has something to say.
import cron, { type ScheduledTask } from "node-cron";
import { JobBusyError, type StateFile } from "./state.js";

export interface Job {
  /** Lower-case letters, digits and dashes. */
  name: string;
  /** A cron expression (node-cron: an optional seconds field first); "" schedules nothing (manual runs only). */
  schedule: string;
  /** Do the work; resolves to a one-line summary for the state file and the log. */
  run(signal: AbortSignal): Promise<string>;
  /** Runs in every process on its own: no cross-process lock, no state record, logged only when its summary is not
   *  empty. For watchers on a short interval (following promotions) that each process needs for itself. */
  local?: boolean;
}

export interface JobRun {
  job: string;
  reason: "scheduled" | "manual";
  outcome: "ok" | "failed" | "busy";
  summary: string;
  ms: number;
}

export class Scheduler {
  private readonly tasks: ScheduledTask[] = [];
  private readonly running = new Map<string, AbortController>();

  constructor(private readonly options: { state: StateFile; jobs: Job[]; log?: (line: string) => void; timezone?: string }) {
    for (const job of options.jobs) {
      if (job.schedule && !cron.validate(job.schedule)) {
        throw new Error(`the ${job.name} schedule "${job.schedule}" is not a cron expression (minute hour day month weekday, e.g. "0 */6 * * *")`);
      }
    }
  }

  /** Put every job with a schedule on it. */
  start(): void {
    for (const job of this.options.jobs) {
      if (!job.schedule) continue;
      this.tasks.push(cron.schedule(job.schedule, () => this.trigger(job.name, "scheduled"), {
        // A local job refuses an overlapping run itself, quietly; node-cron would warn on every skipped tick.
        name: job.name, noOverlap: !job.local, timezone: this.options.timezone,
      }));
      if (!job.local) this.log(`[scheduler] ${job.name}: "${job.schedule}"`);
    }
  }

  /** Stop scheduling, cancel running jobs and wait for them to wind down. */
  async stop(): Promise<void> {
    for (const task of this.tasks) await task.destroy();
    this.tasks.length = 0;
    for (const controller of this.running.values()) controller.abort(new Error("the scheduler is stopping"));
    while (this.running.size > 0) await new Promise((resolve) => setTimeout(resolve, 20));
  }

  /** Whether `name` runs in this process now. */
  isRunning(name: string): boolean {
    return this.running.has(name);
  }

  /** Run a job now. A job already running (here or in another process) is not started twice: outcome "busy". */
  async trigger(name: string, reason: JobRun["reason"] = "manual"): Promise<JobRun> {
    const job = this.options.jobs.find((entry) => entry.name === name);
    if (!job) throw new Error(`no job ${name}; the jobs are ${this.options.jobs.map((entry) => entry.name).join(", ")}`);
    const started = performance.now();
    if (job.local) return this.runLocal(job, reason, started);
    const controller = new AbortController();
    try {
      return await this.options.state.exclusive(name, async () => {
        this.running.set(name, controller);
        await this.options.state.update((state) => { state.jobs[name] = { ...state.jobs[name], lastRun: new Date().toISOString() }; });
        try {
          const summary = await job.run(controller.signal);
          await this.record(name, "ok", summary);
          this.log(`[scheduler] ${name} (${reason}): ${summary}`);
          return { job: name, reason, outcome: "ok" as const, summary, ms: performance.now() - started };
        } catch (error) {
          const message = error instanceof Error ? error.message : String(error);
          await this.record(name, controller.signal.aborted ? "cancelled" : "failed", message);
          this.log(`[scheduler] ${name} (${reason}) failed: ${message}`);
          return { job: name, reason, outcome: "failed" as const, summary: message, ms: performance.now() - started };
        } finally {
          this.running.delete(name);
        }
      });
    } catch (error) {
      if (!(error instanceof JobBusyError)) throw error;
      this.log(`[scheduler] ${name} (${reason}) skipped: ${error.message}`);
      return { job: name, reason, outcome: "busy", summary: error.message, ms: performance.now() - started };
    }
  }

  private async runLocal(job: Job, reason: JobRun["reason"], started: number): Promise<JobRun> {
    const finish = (outcome: JobRun["outcome"], summary: string) => ({ job: job.name, reason, outcome, summary, ms: performance.now() - started });
    if (this.running.has(job.name)) return finish("busy", `${job.name} is already running in this process`);
    const controller = new AbortController();
    this.running.set(job.name, controller);
    try {
      const summary = await job.run(controller.signal);
      if (summary) this.log(`[scheduler] ${job.name}: ${summary}`);
      return finish("ok", summary);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      this.log(`[scheduler] ${job.name} failed: ${message}`);
      return finish("failed", message);
    } finally {
      this.running.delete(job.name);
    }
  }

  private async record(name: string, outcome: "ok" | "failed" | "cancelled", summary: string): Promise<void> {
    await this.options.state.update((state) => {
      state.jobs[name] = {
        ...state.jobs[name], lastFinished: new Date().toISOString(), lastOutcome: outcome,
        ...(outcome === "ok" ? { lastSummary: summary, lastError: undefined } : { lastError: summary }),
      };
    });
  }

  private log(line: string): void {
    this.options.log?.(line);
  }
}
