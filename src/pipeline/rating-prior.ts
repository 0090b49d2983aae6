// Users' ratings as a prior in retrieval: a LoRA's up and down votes (over every rated generation that used it)
// become a score in (-1, 1) that a few votes move little and no votes leave at 0, so a new LoRA is neither helped
// nor hurt and one early 👎 does not bury it.

export interface Votes {
  up: number;
  down: number;
}

/** Where the retriever reads votes per LoRA id. */
export interface RatingSource {
  votes(): Promise<Map<string, Votes>>;
}

/** (up − down) / (up + down + pseudoCount): the vote balance shrunk toward 0 by `pseudoCount` neutral votes. */
export function ratingPrior(votes: Votes | undefined, pseudoCount: number): number {
  if (!votes) return 0;
  const total = votes.up + votes.down;
  return total > 0 ? (votes.up - votes.down) / (total + Math.max(0, pseudoCount)) : 0;
}

/** A RatingSource over a slow full count (GenerationStore.ratingsByLora reads every rating), recounted at most
 *  once per `maxAgeMs`: a vote reaches retrieval within that time, and a burst of prompts costs one count. */
export class CachedVotes implements RatingSource {
  private counted: { at: number; votes: Promise<Map<string, Votes>> } | undefined;

  constructor(private readonly count: () => Promise<Array<Votes & { lora: string }>>, private readonly maxAgeMs = 60_000,
    private readonly now: () => number = Date.now) {}

  votes(): Promise<Map<string, Votes>> {
    if (!this.counted || this.now() - this.counted.at > this.maxAgeMs) {
      const votes = this.count().then((rows) => new Map(rows.map((row) => [row.lora, { up: row.up, down: row.down }])));
      this.counted = { at: this.now(), votes };
      // A failed count is not cached: the next prompt tries again (and this one is scored without ratings).
      votes.catch(() => { this.counted = undefined; });
    }
    return this.counted.votes.catch(() => new Map());
  }
}
