// What was generated and how people rated it: LanceDB tables `generations` and `ratings` beside the pool's.
// A rating is per (generation, user): rating again replaces the earlier one. Ratings add up per LoRA.
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
  created_at: string;
}

export interface LoraRating {
  lora: string;
  up: number;
  down: number;
}

const text = (name: string) => new Field(name, new Utf8(), false);
const GENERATIONS = new Schema([text("id"), text("user"), text("prompt"), text("seeds"), text("loras"), text("fusion"),
  text("model_version"), text("gate_version"), text("images"), text("timings"), text("created_at")]);
const RATINGS = new Schema([text("id"), text("generation"), text("user"), new Field("value", new Int32(), false),
  text("created_at")]);

export class GenerationStore {
  private constructor(private readonly generations: lancedb.Table, private readonly ratings: lancedb.Table) {}

  static async open(uri: string): Promise<GenerationStore> {
    const db = await lancedb.connect(uri);
    const generations = await db.createEmptyTable("generations", GENERATIONS, { existOk: true });
    const ratings = await db.createEmptyTable("ratings", RATINGS, { existOk: true });
    return new GenerationStore(generations, ratings);
  }

  async add(record: GenerationRecord): Promise<void> {
    await this.generations.add([{
      ...record, seeds: JSON.stringify(record.seeds), loras: JSON.stringify(record.loras),
      gate_version: record.gate_version ?? "", timings: JSON.stringify(record.timings),
    }]);
  }

  async get(id: string): Promise<GenerationRecord | undefined> {
    if (!/^[\w-]{1,64}$/.test(id)) return undefined;
    const [row] = await this.generations.query().where(`id = '${id}'`).limit(1).toArray();
    if (!row) return undefined;
    return {
      id: row.id, user: row.user, prompt: row.prompt, seeds: JSON.parse(row.seeds), loras: JSON.parse(row.loras),
      fusion: row.fusion, model_version: row.model_version, gate_version: row.gate_version || null,
      images: row.images, timings: JSON.parse(row.timings), created_at: row.created_at,
    };
  }

  /** Record `user`'s rating (+1 or -1) of a generation, replacing any earlier one; false if there is no such generation. */
  async rate(generation: string, user: string, value: 1 | -1, now = new Date()): Promise<boolean> {
    if (!(await this.get(generation))) return false;
    await this.ratings.mergeInsert("id").whenMatchedUpdateAll().whenNotMatchedInsertAll().execute([{
      id: `${generation}:${user}`, generation, user, value, created_at: now.toISOString(),
    }]);
    return true;
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
        const total = totals.get(lora) ?? { lora, up: 0, down: 0 };
        if (rating.value > 0) total.up += 1;
        else total.down += 1;
        totals.set(lora, total);
      }
    }
    return [...totals.values()].sort((a, b) => (b.up - b.down) - (a.up - a.down) || a.lora.localeCompare(b.lora));
  }
}
