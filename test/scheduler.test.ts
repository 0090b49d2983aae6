// The scheduler: a job on a every-second cron that takes longer than a second never runs beside itself, a manual
// run (here or from another process) is refused while it runs, a lock left by a dead process does not block, and
// every run's outcome is in the state file for the next start.
import { mkdtemp, mkdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { Scheduler, type Job } from "../src/scheduler/scheduler.js";
import { StateFile } from "../src/scheduler/state.js";

const freshState = async () => new StateFile(join(await mkdtemp(join(tmpdir(), "autolora-scheduler-")), "state.json"));
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("the scheduler", () => {
  it("never overlaps a job with itself, on schedule or by hand", async () => {
    const state = await freshState();
    let running = 0;
    let most = 0;
    let runs = 0;
    const slow: Job = {
      name: "crawl", schedule: "* * * * * *", // every second
      run: async () => {
        running += 1;
        runs += 1;
        most = Math.max(most, running);
        await sleep(1500);
        running -= 1;
        return `run ${runs}`;
      },
    };
    const log: string[] = [];
    const scheduler = new Scheduler({ state, jobs: [slow], log: (line) => log.push(line) });
    scheduler.start();
    await sleep(1200); // the first tick has started a run
    expect((await scheduler.trigger("crawl")).outcome).toBe("busy");
    // Another process (a manual `autolora crawl`) sharing the state folder is refused too.
    const other = new Scheduler({ state: new StateFile(state.path), jobs: [{ ...slow, schedule: "" }] });
    expect((await other.trigger("crawl")).outcome).toBe("busy");
    await sleep(3000);
    await scheduler.stop();
    expect(most).toBe(1);
    expect(runs).toBeGreaterThanOrEqual(2);
    expect(runs).toBeLessThanOrEqual(3); // 4 s of ticks, 1.5 s per run: never more than one at a time
    const saved = (await new StateFile(state.path).read()).jobs.crawl!;
    expect(saved).toMatchObject({ lastOutcome: "ok", lastSummary: expect.stringMatching(/^run \d$/) });
    expect(Date.parse(saved.lastFinished!)).toBeGreaterThanOrEqual(Date.parse(saved.lastRun!));
  }, 20_000);

  it("records failures, runs past a dead process's lock, and refuses a bad cron expression", async () => {
    const state = await freshState();
    await mkdir(join(state.path, ".."), { recursive: true });
    await writeFile(join(state.path, "..", "maintenance.lock"), "999999"); // left by a process that died
    const scheduler = new Scheduler({
      state, jobs: [{ name: "maintenance", schedule: "", run: async () => { throw new Error("the index is read-only"); } }],
    });
    expect(await scheduler.trigger("maintenance")).toMatchObject({ outcome: "failed", summary: "the index is read-only" });
    expect((await state.read()).jobs.maintenance).toMatchObject({ lastOutcome: "failed", lastError: "the index is read-only" });
    await expect(scheduler.trigger("retrain")).rejects.toThrow("no job retrain; the jobs are maintenance");
    expect(() => new Scheduler({ state, jobs: [{ name: "crawl", schedule: "every six hours", run: async () => "" }] }))
      .toThrow(/the crawl schedule "every six hours" is not a cron expression/);
  });
});
