// Per-user limits on generations: a sliding one-minute window and a daily quota (UTC days). The day's count
// starts from the generations already stored, so a restart does not hand out a fresh quota. Admins are exempt.
import type { Requester } from "./commands.js";

export class RateLimitedError extends Error {
  override readonly name = "RateLimitedError";
  readonly code = "rate-limited";
  constructor(message: string, readonly retryAfterMs: number) {
    super(message);
  }
}

export interface RateLimiterOptions {
  /** 0: no limit. */
  perMinute: number;
  /** 0: no limit. */
  perDay: number;
  /** Generations the user already made since `since` (read once per user per day). */
  countToday: (user: string, since: Date) => Promise<number>;
  now?: () => number;
}

const MINUTE = 60_000;
const DAY = 86_400_000;

export class RateLimiter {
  private readonly recent = new Map<string, number[]>();
  private readonly daily = new Map<string, { day: number; count: number }>();
  private readonly now: () => number;
  private readonly lastTaken = new Map<string, number>();

  constructor(private readonly options: RateLimiterOptions) {
    this.now = options.now ?? Date.now;
  }

  /** Count one generation for `requester`, or throw RateLimitedError saying when they may go on. */
  async take(requester: Requester): Promise<void> {
    if (requester.admin) return;
    const now = this.now();
    const { perMinute, perDay } = this.options;
    const day = Math.floor(now / DAY);
    if (perDay > 0) {
      let today = this.daily.get(requester.id);
      if (!today || today.day !== day) {
        today = { day, count: await this.options.countToday(requester.id, new Date(day * DAY)) };
        this.daily.set(requester.id, today);
      }
      if (today.count >= perDay) {
        const wait = (day + 1) * DAY - now;
        throw new RateLimitedError(`you have used today's ${perDay} images; the quota renews in ${Math.ceil(wait / 3_600_000)} h (00:00 UTC)`, wait);
      }
    }
    const times = (this.recent.get(requester.id) ?? []).filter((time) => time > now - MINUTE);
    if (perMinute > 0 && times.length >= perMinute) {
      const wait = times[0]! + MINUTE - now;
      throw new RateLimitedError(`slow down: at most ${perMinute} images a minute; try again in ${Math.ceil(wait / 1000)} s`, wait);
    }
    times.push(now);
    if (times.length > 0) this.recent.set(requester.id, times.slice(-Math.max(perMinute, 1)));
    const today = this.daily.get(requester.id);
    if (today) today.count += 1;
    this.lastTaken.set(requester.id, now);
    // Users idle for a minute need no window: keep the map from growing with every user ever seen.
    if (this.lastTaken.size > 10_000) this.lastTaken.clear();
    if (this.recent.size > 10_000) {
      for (const [user, entries] of this.recent) if (entries.at(-1)! <= now - MINUTE) this.recent.delete(user);
    }
  }

  /** Give back what `take` just counted, when the job it was for was refused (the queue was full). */
  refund(requester: Requester): void {
    const taken = this.lastTaken.get(requester.id);
    if (requester.admin || taken === undefined) return;
    this.lastTaken.delete(requester.id);
    const times = this.recent.get(requester.id) ?? [];
    const index = times.lastIndexOf(taken);
    if (index >= 0) times.splice(index, 1);
    const today = this.daily.get(requester.id);
    if (today && today.count > 0) today.count -= 1;
  }
}
