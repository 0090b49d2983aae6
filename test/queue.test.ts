// The job queue: users take turns, interactive work goes first, caps answer "full" with a wait estimate, and
// a requester can cancel a waiting or running job.
import { describe, expect, it } from "vitest";
import { JobCancelledError } from "../src/gpu/errors.js";
import { FairQueue, QueueFullError, type JobClass } from "../src/pipeline/queue.js";

/** A job the test finishes by hand. */
function gate() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => { open = resolve; });
  return { open, opened };
}

function harness(options: Partial<ConstructorParameters<typeof FairQueue>[0]> = {}) {
  const queue = new FairQueue({ concurrency: 1, perUser: 10, global: 50, ...options });
  const started: string[] = [];
  const gates = new Map<string, ReturnType<typeof gate>>();
  const add = (user: string, name: string, kind: JobClass = "interactive", onPosition?: (p: number) => void) => {
    const g = gate();
    gates.set(name, g);
    return queue.enqueue({ user, kind, onPosition, run: async (signal) => {
      started.push(name);
      await Promise.race([g.opened, new Promise((_, reject) => signal.addEventListener("abort", () => reject(signal.reason)))]);
      return name;
    } });
  };
  const finish = async (name: string) => {
    gates.get(name)!.open();
    await new Promise((resolve) => setTimeout(resolve, 5));
  };
  return { queue, started, add, finish };
}

describe("fair job queue", () => {
  it("lets users take turns, so one user's flood cannot starve another", async () => {
    const { started, add, finish } = harness();
    const flood = ["a1", "a2", "a3", "a4", "a5"].map((name) => add("alice", name));
    const bob = add("bob", "b1");
    const carol = add("carol", "c1");
    for (const name of ["a1", "b1", "c1", "a2", "a3", "a4", "a5"]) await finish(name);
    expect(started).toEqual(["a1", "b1", "c1", "a2", "a3", "a4", "a5"]);
    expect(await bob.result).toBe("b1");
    expect(await carol.result).toBe("c1");
    expect(await Promise.all(flood.map((job) => job.result))).toHaveLength(5);
  });

  it("runs more jobs at once as workers come, in the same turns, and fewer as they go", async () => {
    const { queue, started, add, finish } = harness();
    for (const [user, name] of [["a", "a1"], ["a", "a2"], ["b", "b1"], ["c", "c1"], ["a", "a3"]]) add(user!, name!);
    expect(started).toEqual(["a1"]);
    queue.setConcurrency(3); // two more workers answered
    expect(started).toEqual(["a1", "b1", "c1"]);
    queue.setConcurrency(0); // none now: at least one job still runs at a time
    await finish("a1");
    await finish("b1");
    expect(started).toEqual(["a1", "b1", "c1"]); // c1 still runs: nothing new starts
    await finish("c1");
    expect(started).toEqual(["a1", "b1", "c1", "a2"]);
  });

  it("runs interactive jobs before ingest before training, whatever their arrival", async () => {
    const { started, add, finish } = harness();
    add("scheduler", "t1", "training");
    add("scheduler", "t2", "training");
    add("admin", "i1", "ingest");
    add("alice", "chat1");
    for (const name of ["t1", "chat1", "i1", "t2"]) await finish(name);
    expect(started).toEqual(["t1", "chat1", "i1", "t2"]);
  });

  it("refuses past the per-user and global caps with a wait estimate, and frees places as jobs end", async () => {
    const { queue, add, finish } = harness({ perUser: 2, global: 3, initialJobMs: 40_000 });
    add("alice", "a1");
    add("alice", "a2");
    expect(() => add("alice", "a3")).toThrow(QueueFullError);
    expect(() => add("alice", "a3")).toThrow("you already have 2 jobs queued or running (the limit is 2); try again in about 40 s, or cancel one");
    add("bob", "b1");
    try {
      add("carol", "c1");
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(QueueFullError);
      expect((error as QueueFullError).message).toBe("the queue is full (3 jobs); try again in about 2 minutes");
      expect((error as QueueFullError).code).toBe("queue-full");
    }
    await finish("a1");
    expect(queue.stats()).toMatchObject({ waiting: 1, running: 1 });
    expect(() => add("carol", "c1")).not.toThrow();
  });

  it("tells each waiting job its place in line as it moves up", async () => {
    const { add, finish } = harness();
    add("alice", "a1");
    add("alice", "a2");
    const places: number[] = [];
    const bob = add("bob", "b1", "interactive", (position) => places.push(position));
    expect(places).toEqual([1]); // behind the running a1, ahead of alice's second job
    await finish("a1");
    expect(places).toEqual([1, 0]);
    await finish("b1");
    expect(await bob.result).toBe("b1");
  });

  it("cancels a waiting job without running it, and a running one through its signal", async () => {
    const { queue, started, add, finish } = harness();
    const running = add("alice", "a1");
    const waiting = add("bob", "b1");
    const controller = new AbortController();
    const byRequester = queue.enqueue({ user: "carol", signal: controller.signal, run: async () => "never" });
    expect(waiting.cancel()).toBe(true);
    await expect(waiting.result).rejects.toBeInstanceOf(JobCancelledError);
    controller.abort();
    await expect(byRequester.result).rejects.toThrow("cancelled while it waited");
    expect(queue.positionOf(running.id)).toBe(0);
    expect(running.cancel()).toBe(true);
    await expect(running.result).rejects.toThrow("cancelled while it ran");
    expect(started).toEqual(["a1"]);
    expect(waiting.cancel()).toBe(false);
    const next = add("dave", "d1");
    await finish("d1");
    expect(await next.result).toBe("d1");
  });

  it("keeps going after a job fails", async () => {
    const queue = new FairQueue({ concurrency: 2, perUser: 5, global: 10 });
    const failing = queue.enqueue({ user: "alice", run: async () => { throw new Error("worker exploded"); } });
    const fine = queue.enqueue({ user: "alice", run: async () => 42 });
    await expect(failing.result).rejects.toThrow("worker exploded");
    expect(await fine.result).toBe(42);
    await queue.idle();
    expect(queue.stats()).toMatchObject({ waiting: 0, running: 0 });
  });
});
