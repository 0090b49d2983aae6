// What was generated and how people rated it: LanceDB tables `generations` and `ratings` beside the pool's.
// A rating is per (generation, user): rating again replaces the earlier one. Ratings add up per LoRA. `posts`
// remembers which chat message shows which generation, so a reaction on it (even after a restart) rates it.
import * as lancedb from "@lancedb/lancedb";
import { Field, Int32, Schema, Utf8 } from "apache-arrow";
import type { GenerationMetadata } from "./images.js";

/** A generation's metadata (what its PNGs carry) plus who asked, where its images are, and how long it took. */
export interface GenerationRecord extends GenerationMetadata {
  id: string;
  user: string;
  /** Folder of grid.png, grid.webp and the single images, relative to the data folder. */
  images: string;
  timings: Record<string, number>;
  /** Image size asked for, 0 when the model's default was used (variations keep it). */
  width?: number;
  height?: number;
  created_at: string;
}

export interface LoraRating {
  lora: string;
  up: number;
  down: number;
  /** The sum of the rating values (⭐ counts +2 by default). */
  score: number;
}

const text = (name: string) => new Field(name, new Utf8(), false);
const GENERATIONS = new Schema([text("id"), text("user"), text("prompt"), text("seeds"), text("loras"), text("fusion"),
  text("model_version"), text("gate_version"), text("images"), text("timings"), text("created_at"), text("size"),
  text("fusion_note")]);
const RATINGS = new Schema([text("id"), text("generation"), text("user"), new Field("value", new Int32(), false),
  text("created_at")]);
const POSTS = new Schema([text("id"), text("generation"), text("created_at")]);

export class GenerationStore {
  private readonly recentPosts = new Map<string, string>();

  private constructor(private readonly generations: lancedb.Table, private readonly ratings: lancedb.Table,
    private readonly posts: lancedb.Table) {}

  static async open(uri: string): Promise<GenerationStore> {
    const db = await lancedb.connect(uri);
    // An existing table is opened as it is (creating it "if missing" with today's schema refuses an older one).
    const generations = (await db.tableNames()).includes("generations")
      ? await db.openTable("generations") : await db.createEmptyTable("generations", GENERATIONS);
    // Tables made before images had a size: add the column, empty (the model's default size).
    const columns = (await generations.schema()).fields.map((field) => field.name);
    if (!columns.includes("size")) await generations.addColumns([{ name: "size", valueSql: "''" }]);
    // ... and before a worker could say why its fusion differs from the one asked for.
    if (!columns.includes("fusion_note")) await generations.addColumns([{ name: "fusion_note", valueSql: "''" }]);
    const ratings = await db.createEmptyTable("ratings", RATINGS, { existOk: true });
    const posts = await db.createEmptyTable("posts", POSTS, { existOk: true });
    return new GenerationStore(generations, ratings, posts);
  }

  async add(record: GenerationRecord): Promise<void> {
    const { width, height, fusion_note: note, ...rest } = record;
    await this.generations.add([{
      ...rest, fusion_note: note ?? "", seeds: JSON.stringify(record.seeds), loras: JSON.stringify(record.loras),
      gate_version: record.gate_version ?? "", timings: JSON.stringify(record.timings),
      size: width && height ? `${width}x${height}` : "",
    }]);
  }

  async get(id: string): Promise<GenerationRecord | undefined> {
    if (!/^[\w-]{1,64}$/.test(id)) return undefined;
    const [row] = await this.generations.query().where(`id = '${id}'`).limit(1).toArray();
    if (!row) return undefined;
    return {
      id: row.id, user: row.user, prompt: row.prompt, seeds: JSON.parse(row.seeds), loras: JSON.parse(row.loras),
      fusion: row.fusion, ...(row.fusion_note ? { fusion_note: row.fusion_note } : {}), model_version: row.model_version, gate_version: row.gate_version || null,
      images: row.images, timings: JSON.parse(row.timings), created_at: row.created_at,
      ...sizeOf(row.size),
    };
  }

  /** How many generations `user` made since `since` (for daily quotas). */
  async countSince(user: string, since: Date): Promise<number> {
    return this.generations.countRows(`user = '${quote(user)}' AND created_at >= '${since.toISOString()}'`);
  }

  /** Record `user`'s rating (a whole number, e.g. +1, -1, +2) of a generation, replacing any earlier one; false if there is no such generation. */
  async rate(generation: string, user: string, value: number, now = new Date()): Promise<boolean> {
    if (!Number.isInteger(value) || value === 0) throw new Error(`a rating is a non-zero whole number, not ${value}`);
    if (!(await this.get(generation))) return false;
    await this.ratings.mergeInsert("id").whenMatchedUpdateAll().whenNotMatchedInsertAll().execute([{
      id: `${generation}:${user}`, generation, user, value, created_at: now.toISOString(),
    }]);
    return true;
  }

  /** Take back `user`'s rating of a generation if it is `value` (a removed reaction takes back only its own rating). */
  async unrate(generation: string, user: string, value?: number): Promise<boolean> {
    const id = `${quote(generation)}:${quote(user)}`;
    const where = `id = '${id}'${value === undefined ? "" : ` AND value = ${Math.trunc(value)}`}`;
    if ((await this.ratings.countRows(where)) === 0) return false;
    await this.ratings.delete(where);
    return true;
  }

  /** Ratings given (or changed) since `since`. */
  async ratingsSince(since: Date): Promise<number> {
    return this.ratings.countRows(`created_at > '${since.toISOString()}'`);
  }

  /** Generations whose ratings add up to at least `minScore`, best first (at most `limit`). */
  async highlyRated(minScore: number, limit = 500): Promise<Array<{ generation: GenerationRecord; score: number }>> {
    const totals = new Map<string, number>();
    for (const rating of await this.ratings.query().select(["generation", "value"]).toArray()) {
      totals.set(rating.generation, (totals.get(rating.generation) ?? 0) + rating.value);
    }
    const best = [...totals.entries()].filter(([, score]) => score >= minScore).sort((a, b) => b[1] - a[1]).slice(0, limit);
    const found: Array<{ generation: GenerationRecord; score: number }> = [];
    for (const [id, score] of best) {
      const generation = await this.get(id);
      if (generation) found.push({ generation, score });
    }
    return found;
  }

  /** Each user's rating of one generation. */
  async ratingsOf(generation: string): Promise<Array<{ user: string; value: number }>> {
    const rows = await this.ratings.query().where(`generation = '${quote(generation)}'`).toArray();
    return rows.map((row) => ({ user: row.user, value: row.value })).sort((a, b) => a.user.localeCompare(b.user));
  }

  /** Remember that chat message `key` ("<adapter>:<message id>") shows `generation`. */
  async linkPost(key: string, generation: string, now = new Date()): Promise<void> {
    // Known at once, before the write lands: a reaction can follow the post within milliseconds.
    this.recentPosts.delete(key);
    this.recentPosts.set(key, generation);
    if (this.recentPosts.size > 10_000) this.recentPosts.delete(this.recentPosts.keys().next().value!);
    await this.posts.mergeInsert("id").whenMatchedUpdateAll().whenNotMatchedInsertAll().execute([{
      id: key, generation, created_at: now.toISOString(),
    }]);
  }

  /** The generation a chat message shows, if it shows one. */
  async postedGeneration(key: string): Promise<string | undefined> {
    const recent = this.recentPosts.get(key);
    if (recent) return recent;
    const [row] = await this.posts.query().where(`id = '${quote(key)}'`).limit(1).toArray();
    return row?.generation;
  }

  /** Up and down votes per LoRA over every rated generation that used it, most liked first. */
  async ratingsByLora(): Promise<LoraRating[]> {
    const ratings = await this.ratings.query().toArray();
    const totals = new Map<string, LoraRating>();
    const used = new Map<string, string[]>();
    for (const rating of ratings) {
      if (!used.has(rating.generation)) {
        used.set(rating.generation, (await this.get(rating.generation))?.loras.map((lora) => lora.id) ?? []);
      }
      for (const lora of used.get(rating.generation)!) {
        const total = totals.get(lora) ?? { lora, up: 0, down: 0, score: 0 };
        if (rating.value > 0) total.up += 1;
        else total.down += 1;
        total.score += rating.value;
        totals.set(lora, total);
      }
    }
    return [...totals.values()].sort((a, b) => b.score - a.score || a.lora.localeCompare(b.lora));
  }
}

/** A string inside single quotes in a LanceDB filter. */
function quote(value: string): string {
  return value.replace(/'/g, "''");
}

function sizeOf(size: string | null | undefined): { width?: number; height?: number } {
  const match = /^(\d+)x(\d+)$/.exec(size ?? "");
  return match ? { width: Number(match[1]), height: Number(match[2]) } : {};
}
