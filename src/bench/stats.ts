// Confidence intervals for the benchmarks: a percentile bootstrap of a mean that resamples whole groups (the images
// of one prompt), since the seeds of one prompt are not independent draws. Seeded, so a run repeats its numbers.

/** A reproducible uniform [0, 1) stream (mulberry32). */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const BOOTSTRAP_DRAWS = 2000;

/** Three decimals, as the benchmarks report figures. */
export const round3 = (value: number) => Math.round(value * 1000) / 1000;

/** The mean over every value of every group. */
export function pooledMean(groups: number[][]): number {
  const values = groups.flat();
  return values.length ? values.reduce((sum, value) => sum + value, 0) / values.length : Number.NaN;
}

/** A 95% (or `level`) percentile bootstrap interval of the pooled mean, resampling groups with replacement. */
export function bootstrapInterval(groups: number[][], random: () => number, level = 0.95, draws = BOOTSTRAP_DRAWS): [number, number] {
  if (groups.length === 0) return [Number.NaN, Number.NaN];
  const sums = groups.map((group) => group.reduce((sum, value) => sum + value, 0));
  const sizes = groups.map((group) => group.length);
  const means: number[] = [];
  for (let draw = 0; draw < draws; draw++) {
    let sum = 0;
    let size = 0;
    for (let pick = 0; pick < groups.length; pick++) {
      const group = Math.floor(random() * groups.length);
      sum += sums[group]!;
      size += sizes[group]!;
    }
    means.push(size ? sum / size : Number.NaN);
  }
  means.sort((a, b) => a - b);
  const at = (q: number) => means[Math.min(draws - 1, Math.max(0, Math.round(q * (draws - 1))))]!;
  return [at((1 - level) / 2), at((1 + level) / 2)];
}
