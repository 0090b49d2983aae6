// A burst of 200 /imagine from 20 users, through the real Discord and Slack adapters against their fakes: every
// one acknowledged within Discord's and Slack's 3-second window, every one answered with its grid, and the queue
// taking turns between users (no user waits behind more than one job of each other user).
import { describe, expect, it } from "vitest";
import { maxPositionGap, runBurst } from "../src/bench/burst.js";

describe("a burst of 200 /imagine from 20 users", () => {
  for (const via of ["discord", "slack"] as const) {
    it(`through ${via}: all acknowledged in time, none lost, users served in turn`, async () => {
      // No warm-up: the 3-second window must hold for a host whose first commands are the burst.
      const report = await runBurst({ via, requests: 200, users: 20, warmup: 0 });
      expect(report.acked_within_3s).toBe(200);
      expect(report.p99_ack_ms).toBeLessThan(3000);
      expect(report.lost).toBe(0);
      expect(report.fairness.max_position_gap).toBeLessThanOrEqual(19);
    }, 240_000);
  }

  it("measures the gap as jobs of others started between two waiting jobs of one user", () => {
    const job = (user: string, queuedAt: number, startedAt: number) => ({ user, queuedAt, startedAt });
    // a's second job waited while b, c and d each ran once: a gap of 3.
    expect(maxPositionGap([job("a", 0, 1), job("a", 0, 5), job("b", 0, 2), job("c", 0, 3), job("d", 0, 4)])).toBe(3);
    // a queued its second job only after b started: nothing was waiting, so no gap counts.
    expect(maxPositionGap([job("a", 0, 1), job("b", 0, 2), job("a", 3, 4)])).toBe(0);
  });
});
