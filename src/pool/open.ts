// The LoRA pool as configured: the content-addressed store (data/pool) and its LanceDB index, swept of what an
// interrupted add or removal left behind; and the proving-ground bundle's LoRAs for an empty pool (`make demo`).
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Config } from "../config/schema.js";
import type { LoraIndex } from "./index.js";
import type { IngestItem, IngestOptions } from "./ingest.js";
import { LanceLoraIndex } from "./lancedb-index.js";
import { LoraStore } from "./store.js";
import { sweepPool } from "./sweep.js";

export interface Pool {
  store: LoraStore;
  index: LoraIndex;
}

/** Where the pool's index and the generations are kept: `lancedb_uri`, or data/lancedb. */
export function lancedbUri(config: Config): string {
  return config.lancedb_uri || join(resolve(config.data_dir), "lancedb");
}

/** Open the pool and sweep it (see sweep.ts); `log` gets one line if anything was removed. */
export async function openPool(config: Config, log?: (line: string) => void): Promise<Pool> {
  const dataDir = resolve(config.data_dir);
  const pool = {
    store: new LoraStore(join(dataDir, "pool")),
    index: await LanceLoraIndex.open({ uri: lancedbUri(config) }),
  };
  await sweepPool(pool, { downloads: join(dataDir, "tmp"), log });
  return pool;
}

interface BundleLora {
  id: string;
  file: string;
  previews: Array<{ caption: string }>;
}

/** The bundle's pool into an empty index, with the preview captions the bundle records; false if it has none.
 *  Added in batches (one worker call and one index commit each); a LoRA that fails is named and the rest go in. */
export async function seedFromBundle(bundleDir: string, index: LoraIndex,
  ingestMany: (items: IngestItem[], options: IngestOptions) => Promise<Array<unknown>>, log: (line: string) => void): Promise<boolean> {
  const listing = join(bundleDir, "pool", "pool.json");
  if (!existsSync(listing) || (await index.count()) > 0) return false;
  const records = (JSON.parse(readFileSync(listing, "utf8")) as { loras: BundleLora[] }).loras;
  log(`[pool] the pool is empty: adding the bundle's ${records.length} LoRAs`);
  const outcomes = await ingestMany(records.map((record) => ({
    file: join(bundleDir, record.file),
    metadata: { name: record.id, source: "bundle", captions: record.previews.map((preview) => preview.caption) },
  })), { onProgress: (done, total) => log(`[pool] ${done}/${total} added`) });
  outcomes.forEach((outcome, n) => {
    if (outcome instanceof Error) log(`[pool] the bundle's ${records[n]!.file} could not be added: ${outcome.message}`);
  });
  return true;
}
