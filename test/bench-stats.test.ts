// How the quality benchmark turns the evaluator's verdicts into figures with intervals: what its JSON means.
import { describe, expect, it } from "vitest";
import { armScores, verdict } from "../src/bench/quality-bench.js";
import { bootstrapInterval, pooledMean, seededRandom } from "../src/bench/stats.js";

describe("bootstrap intervals over prompts", () => {
  it("repeat with the seed, hold the mean, and narrow as prompts are added", () => {
    // 40 prompts × 4 images, about half right, in a fixed pattern
    const groups = Array.from({ length: 40 }, (_, n) => [n % 2, n % 3 === 0 ? 1 : 0, 1, 0]);
    const first = bootstrapInterval(groups, seededRandom(7));
    expect(bootstrapInterval(groups, seededRandom(7))).toEqual(first);
    const mean = pooledMean(groups);
    expect(first[0]).toBeLessThan(mean);
    expect(first[1]).toBeGreaterThan(mean);
    const more = bootstrapInterval([...groups, ...groups, ...groups, ...groups], seededRandom(7));
    expect(more[1] - more[0]).toBeLessThan((first[1] - first[0]) * 0.7); // four times the prompts: about half as wide
    expect(bootstrapInterval([[1, 1], [1, 1]], seededRandom(1))).toEqual([1, 1]);
    expect(bootstrapInterval([], seededRandom(1)).every(Number.isNaN)).toBe(true);
  });

  it("resample whole prompts: one prompt's seeds move together", () => {
    // Two prompts, one always right and one always wrong: the interval spans nearly 0 to 1, not the 0.5 ± a bit
    // that treating the 8 images as independent would give.
    const [low, high] = bootstrapInterval([[1, 1, 1, 1], [0, 0, 0, 0]], seededRandom(3));
    expect(low).toBe(0);
    expect(high).toBe(1);
  });
});

describe("an arm's scores", () => {
  it("count an image as both correct only when shape and style are as asked", () => {
    expect(verdict({ shape: "arrow", style: "dotted" }, { shape: "arrow", style: "dotted" })).toEqual([true, true]);
    expect(verdict({ shape: "arrow", style: "dotted" }, { shape: "arrow", style: "flat" })).toEqual([true, false]);
    const scores = armScores(
      [[[true, true], [true, false], [false, false], [true, true]], [[false, true], [false, true], [true, true], [false, false]]],
      [["arrow", "dotted"], ["arrow", "arrow", null]], [["arrow", "dotted"], ["cross", "wavy"]], seededRandom(1));
    expect(scores).toMatchObject({
      both_correct: 0.375, attribute_acc: 0.563, shape_acc: 0.5, style_acc: 0.625, picks_cover_both: 0.5, loras_per_prompt: 2.5,
    });
    expect(scores.both_correct_ci[0]).toBeLessThanOrEqual(0.375);
    expect(scores.both_correct_ci[1]).toBeGreaterThanOrEqual(0.375);
  });
});
