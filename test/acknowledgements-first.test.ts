// During a burst the chat core lets every acknowledgement out before any request's work starts (core.ts).
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { AcknowledgementsFirst } from "../src/bots/core.js";

describe("acknowledgements first", () => {
  beforeEach(() => void vi.useFakeTimers({ toFake: ["setTimeout", "performance"] }));
  afterEach(() => void vi.useRealTimers());

  it("holds work while requests keep arriving, and starts it all once they stop", async () => {
    const gate = new AcknowledgementsFirst(20, 1000);
    const started: number[] = [];
    const turns = [];
    for (let i = 0; i < 10; i++) { // ten requests, 10 ms apart
      turns.push(gate.turn().then(() => started.push(performance.now())));
      await vi.advanceTimersByTimeAsync(10);
    }
    expect(started).toEqual([]); // 100 ms in: nothing has started while acknowledgements were still going out
    await vi.advanceTimersByTimeAsync(60);
    await Promise.all(turns);
    expect(started).toHaveLength(10);
    expect(Math.min(...started)).toBeGreaterThanOrEqual(90 + 20); // after the last arrival plus the quiet window
  });

  it("lets a lone request go after the quiet window, and never holds work longer than the cap", async () => {
    const gate = new AcknowledgementsFirst(20, 200);
    let lone = false;
    void gate.turn().then(() => { lone = true; });
    await vi.advanceTimersByTimeAsync(45);
    expect(lone).toBe(true);

    let first: number | undefined;
    void gate.turn().then(() => { first = performance.now(); });
    const from = performance.now();
    for (let i = 0; i < 60 && first === undefined; i++) { // a stream that never goes quiet
      void gate.turn();
      await vi.advanceTimersByTimeAsync(5);
    }
    expect(first! - from).toBeGreaterThanOrEqual(200);
    expect(first! - from).toBeLessThanOrEqual(230);
  });
});
