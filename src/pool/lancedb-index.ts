// The LoRA index in LanceDB: one `loras` table, written with mergeInsert on the id so an ingest is one atomic,
// idempotent commit; cosine vector search with SQL filters, and an IVF-PQ index once the table is large enough
// that a flat scan gets slow.
import * as lancedb from "@lancedb/lancedb";
import {
  Bool, Field, FixedSizeList, Float32, Int32, List, Schema, Utf8, Int64,
} from "apache-arrow";
import {
  embeddingKind, type EmbeddingColumn, type LoraFilters, type LoraIndex, type LoraRecord, type LoraState, type LoraSummary, type SearchHit,
} from "./index.js";

export interface LanceLoraIndexOptions {
  /** A LanceDB URI: a local folder (data/lancedb) or object storage. */
  uri: string;
  /** Rows from which an ANN (IVF-PQ) index is built; below it search is an exact scan. Default 10 000. */
  annThreshold?: number;
}

// Index statistics without the IVF centroids (LanceDB's coming default): we only read the row counts, and the
// current default logs a warning on every call.
process.env.LANCE_INCLUDE_VECTOR_CENTROIDS ??= "false";

const TABLE = "loras";
const VECTOR_INDEX = "vector_idx";
// Every search filters on these (state, and SEARCHABLE's two), so they get scalar indices with the ANN index.
const FILTER_COLUMNS = ["state", "family", "nsfw", "encoder_version", "has_text"];
// Rows outside the ANN index are scanned exactly on every search (~2.5 ms per 1 000 rows on 2 cores, measured).
const UNINDEXED_LIMIT = 5_000;
const ID = /^[0-9a-f]{64}$/;

function schemaFor(dimension: number): Schema {
  const strings = () => new List(new Field("item", new Utf8(), true));
  return new Schema([
    new Field("id", new Utf8(), false),
    new Field("name", new Utf8(), false),
    new Field("source", new Utf8(), false),
    new Field("url", new Utf8(), false),
    new Field("family", new Utf8(), false),
    new Field("format", new Utf8(), false),
    new Field("ranks", new List(new Field("item", new Int32(), true)), false),
    new Field("modules", new Int32(), false),
    new Field("trigger_words", strings(), false),
    new Field("tags", strings(), false),
    new Field("captions", strings(), false),
    new Field("license", new Utf8(), false),
    new Field("nsfw", new Bool(), false),
    new Field("state", new Utf8(), false),
    new Field("file", new Utf8(), false),
    new Field("bytes", new Int64(), false),
    new Field("vector", new FixedSizeList(dimension, new Field("item", new Float32(), true)), false),
    // Zeros when the LoRA has no text (has_text false): LanceDB's vector search wants a value in every row.
    new Field("text_vector", new FixedSizeList(dimension, new Field("item", new Float32(), true)), false),
    new Field("has_text", new Bool(), false),
    new Field("text_checked", new Bool(), false),
    new Field("encoder_version", new Utf8(), false),
    new Field("added_at", new Utf8(), false),
    // The four list columns again, as one JSON string: what reads select. Taking list columns for a search's hits
    // cost more than the search (1M LoRAs: 28 vs 14 ms p50); the list columns stay for filters (tags).
    new Field("lists", new Utf8(), false),
  ]);
}

const LIST_COLUMNS = ["ranks", "trigger_words", "tags", "captions"] as const;
/** What reads select: the scalar columns and `lists` (the list columns as JSON). */
const COLUMNS = ["id", "name", "source", "url", "family", "format", "modules", "license", "nsfw", "state", "file", "bytes",
  "encoder_version", "added_at", "has_text", "text_checked", "lists"];
/** A table's index over several segments (one per fold of new rows) is searched segment by segment: maintenance
 *  retrains it into one past this many. */
const MAX_INDEX_SEGMENTS = 1;

export class LanceLoraIndex implements LoraIndex {
  private table: lancedb.Table | undefined;
  private indexed = false;
  /** Whether the table may hold rows with no embedding at all (zeros in `vector`), which every search must then
   *  filter out. Checked when opened, set by an upsert that adds one, never cleared while open: most pools have
   *  none, and their searches skip the filter (on 100 000 rows it cost more than the search). */
  private unsearchable = false;

  private constructor(private readonly db: lancedb.Connection, private readonly annThreshold: number) {}

  static async open(options: LanceLoraIndexOptions): Promise<LanceLoraIndex> {
    const index = new LanceLoraIndex(await lancedb.connect(options.uri), options.annThreshold ?? 10_000);
    if ((await index.db.tableNames()).includes(TABLE)) {
      index.table = await index.db.openTable(TABLE);
      const fields = (await index.table.schema()).fields.map((field) => field.name);
      if (!fields.includes("text_vector")) await index.rewrite("text");
      else if (!fields.includes("lists")) await index.rewrite("lists");
      index.unsearchable = (await index.table.countRows(BY_EMBEDDING.none)) > 0;
      const indices = await index.table.listIndices();
      index.indexed = indices.some((config) => config.columns.includes("vector"));
      // A pool indexed before a filter column got its scalar index gets it now (a search would scan every row).
      for (const column of index.indexed ? FILTER_COLUMNS : []) {
        if (!indices.some((config) => config.columns.includes(column))) {
          await index.table.createIndex(column, { config: lancedb.Index.bitmap(), replace: true });
        }
      }
    }
    return index;
  }

  /**
   * A pool written by an older version, rewritten with the columns it lacks: `text`, the text embedding columns (no
   * text yet, not checked: the host's backfill embeds each LoRA's text); `lists`, the list columns as JSON. The
   * rewrite is one new table version, so a crash in between leaves the old version readable; the ANN index is
   * rebuilt on the new rows.
   */
  private async rewrite(missing: "text" | "lists"): Promise<void> {
    const table = this.table!;
    const field = (await table.schema()).fields.find((f) => f.name === "vector");
    const dimension = (field?.type as FixedSizeList).listSize;
    const rows = (await table.query().toArray())
      .map((row) => toRow({ ...fromRow(row), ...(missing === "text" ? { text_checked: false } : {}) } as LoraRecord, dimension));
    const schema = schemaFor(dimension);
    this.table = rows.length > 0
      ? await this.db.createTable(TABLE, rows, { mode: "overwrite", schema })
      : await this.db.createEmptyTable(TABLE, schema, { mode: "overwrite" });
    this.indexed = false;
    await this.maybeBuildAnnIndex();
  }

  async upsert(records: LoraRecord[]): Promise<void> {
    if (records.length === 0) return;
    for (const record of records) {
      if (!ID.test(record.id)) throw new Error(`LoRA id must be a sha256 in lower-case hex, got ${JSON.stringify(record.id)}`);
    }
    // A LoRA with no embedding at all (no encoder for its family, no text) is stored with zeros and never searched.
    const embedded = records.filter((record) => record.vector.length > 0);
    const dimension = embedded[0]?.vector.length ?? (await this.dimension());
    if (dimension === undefined) throw new Error("the pool's first LoRA needs an embedding (weights or text) to size the index");
    const wrong = embedded.find((record) => record.vector.length !== dimension);
    if (wrong) throw new Error("every LoRA in one upsert needs an embedding of the same size");
    const text = records.find((record) => record.text_vector && record.text_vector.length !== dimension);
    if (text) throw new Error(`the text embedding of ${text.id.slice(0, 12)} has ${text.text_vector!.length} dimensions, its weight embedding ${dimension}`);
    const table = await this.tableFor(dimension);
    const rows = records.map((record) => toRow(record, dimension));
    if (records.some((record) => record.vector.length === 0)) this.unsearchable = true;
    await table.mergeInsert("id").whenMatchedUpdateAll().whenNotMatchedInsertAll().execute(rows);
    await this.maybeBuildAnnIndex();
  }

  /** The width of the stored embeddings; undefined before the first LoRA. */
  private async dimension(): Promise<number | undefined> {
    const field = this.table && (await this.table.schema()).fields.find((f) => f.name === "vector");
    return (field?.type as FixedSizeList | undefined)?.listSize;
  }

  /** Bulk load of records known to be new (a benchmark's synthetic pool, a migration): one append, no id check. */
  async append(records: LoraRecord[]): Promise<void> {
    if (records.length === 0) return;
    const dimension = records[0]!.vector.length;
    const table = await this.tableFor(dimension);
    if (records.some((record) => record.vector.length === 0)) this.unsearchable = true;
    await table.add(records.map((record) => toRow(record, dimension)));
    await this.maybeBuildAnnIndex();
  }

  async get(id: string): Promise<LoraRecord | undefined> {
    if (!this.table || !ID.test(id)) return undefined;
    const rows = await this.table.query().where(`id = '${id}'`).limit(1).toArray();
    return rows[0] ? fromRow(rows[0]) as LoraRecord : undefined;
  }

  async summaries(ids: string[]): Promise<Map<string, LoraSummary>> {
    const wanted = [...new Set(ids.filter((id) => ID.test(id)))];
    const found = new Map<string, LoraSummary>();
    if (!this.table || wanted.length === 0) return found;
    for (let start = 0; start < wanted.length; start += 500) {
      const list = wanted.slice(start, start + 500).map((id) => `'${id}'`).join(", ");
      for (const row of await this.table.query().where(`id IN (${list})`).select(COLUMNS).toArray()) {
        const lora = fromRow(row);
        found.set(lora.id, lora);
      }
    }
    return found;
  }

  async ids(): Promise<Set<string>> {
    if (!this.table) return new Set();
    return new Set((await this.table.query().select(["id"]).toArray()).map((row) => String(row.id)));
  }

  async findByPrefix(prefix: string, limit = 10): Promise<Array<LoraSummary>> {
    if (!this.table || !/^[0-9a-f]{8,64}$/.test(prefix)) return [];
    return (await this.table.query().where(`starts_with(id, '${prefix}')`).select(COLUMNS).limit(limit).toArray()).map(fromRow);
  }

  async findByName(text: string, limit = 25): Promise<Array<LoraSummary>> {
    // LIKE's own wildcards and quotes are dropped from what was typed: a name search, not a pattern language.
    const needle = text.toLowerCase().replace(/[%_'\\]/g, "").trim();
    if (!this.table || !needle) return [];
    const rows = (await this.table.query().where(`lower(name) LIKE '%${needle}%'`).select(COLUMNS).limit(Math.max(limit, 100)).toArray()).map(fromRow);
    const rank = (name: string) => name.toLowerCase() === needle ? 0 : name.toLowerCase().startsWith(needle) ? 1 : 2;
    return rows.sort((a, b) => rank(a.name) - rank(b.name) || a.name.localeCompare(b.name)).slice(0, limit);
  }

  async embeddedByOther(encoderVersion: string, limit = 100): Promise<Array<LoraSummary>> {
    if (!this.table) return [];
    const where = `encoder_version != '${encoderVersion.replace(/'/g, "''")}'`;
    return (await this.table.query().where(where).select(COLUMNS).limit(limit).toArray()).map(fromRow);
  }

  async list(filters: LoraFilters = {}, limit = 1000): Promise<Array<LoraSummary>> {
    if (!this.table) return [];
    let query = this.table.query().select(COLUMNS).limit(limit);
    const where = whereClause(filters);
    if (where) query = query.where(where);
    return (await query.toArray()).map(fromRow).sort((a, b) => a.added_at.localeCompare(b.added_at) || a.id.localeCompare(b.id));
  }

  async search(vector: number[], k: number, filters: LoraFilters = {}, minSimilarity = -1, withVectors = false,
    column: EmbeddingColumn = "vector"): Promise<Array<SearchHit & { vector?: number[]; text_vector?: number[] }>> {
    if (!this.table || k <= 0) return [];
    const columns = withVectors ? [...COLUMNS, "vector", "text_vector", "_distance"] : [...COLUMNS, "_distance"];
    let query = this.table.vectorSearch(vector).column(column).distanceType("cosine").select(columns).limit(k);
    // PQ distances are approximate: re-rank 10k candidates by their exact vectors, so the order and the
    // similarities returned are true cosines. (Text embeddings have no ANN index: an exact scan.)
    if (this.indexed && column === "vector") query = query.refineFactor(10);
    const where = [whereClause({ state: "active", ...filters }), column === "text_vector" ? "has_text = true" : this.unsearchable ? SEARCHABLE : ""]
      .filter(Boolean).join(" AND ");
    if (where) query = query.where(where);
    const rows = await query.toArray();
    return rows
      .map((row) => {
        const { vector: loraVector, text_vector: textVector, ...lora } = fromRow(row);
        return {
          lora, similarity: 1 - Number(row._distance),
          ...(withVectors ? { vector: loraVector, ...(textVector ? { text_vector: textVector } : {}) } : {}),
        };
      })
      .filter((hit) => hit.similarity >= minSimilarity);
  }

  async textUnchecked(limit = 100): Promise<LoraSummary[]> {
    if (!this.table) return [];
    return (await this.table.query().where("text_checked = false").select(COLUMNS).limit(limit).toArray()).map(fromRow);
  }

  async setState(id: string, state: LoraState): Promise<boolean> {
    if (!this.table || !(await this.get(id))) return false;
    await this.table.update({ where: `id = '${id}'`, values: { state } });
    return true;
  }

  async remove(id: string): Promise<boolean> {
    if (!this.table || !(await this.get(id))) return false;
    await this.table.delete(`id = '${id}'`);
    return true;
  }

  async count(filters: LoraFilters = {}): Promise<number> {
    if (!this.table) return 0;
    return this.table.countRows(whereClause(filters) || undefined);
  }

  /** Rows the ANN index covers, rows searched by exact scan beside it, and the index's segments (each searched on
   *  its own); undefined without an index. */
  async annStats(): Promise<{ indexed: number; unindexed: number; segments: number } | undefined> {
    const stats = this.indexed && this.table ? await this.table.indexStats(VECTOR_INDEX) : undefined;
    return stats && { indexed: stats.numIndexedRows, unindexed: stats.numUnindexedRows, segments: stats.numIndices ?? 1 };
  }

  /** Whether searches go through an ANN index (true) or an exact scan. */
  get hasAnnIndex(): boolean {
    return this.indexed;
  }

  private async tableFor(dimension: number): Promise<lancedb.Table> {
    if (!this.table) {
      this.table = await this.db.createEmptyTable(TABLE, schemaFor(dimension), { existOk: true });
    }
    const field = (await this.table.schema()).fields.find((f) => f.name === "vector");
    const existing = (field?.type as FixedSizeList | undefined)?.listSize;
    if (existing !== dimension) {
      throw new Error(`this pool holds ${existing}-d LoRA embeddings, got ${dimension}-d: the encoder changed; ` +
        "re-embed the pool with the new encoder instead of mixing them");
    }
    return this.table;
  }

  /**
   * Scheduled upkeep: compact the table's small fragments (every ingest adds one), fold unindexed rows into the
   * ANN index, and drop table versions older than `keepDays`. Resolves to a one-line summary.
   */
  async maintain(keepDays = 7): Promise<string> {
    if (!this.table) return "the pool is empty; nothing to do";
    const stats = await this.table.optimize({ cleanupOlderThan: new Date(Date.now() - keepDays * 86_400_000) });
    await this.maybeBuildAnnIndex();
    const segments = this.indexed ? (await this.table.indexStats(VECTOR_INDEX))?.numIndices ?? 1 : 1;
    if (segments > MAX_INDEX_SEGMENTS) await this.buildAnnIndex(await this.table.countRows());
    return `${stats.compaction.fragmentsRemoved} fragments compacted into ${stats.compaction.fragmentsAdded}, ` +
      `${stats.prune.oldVersionsRemoved} old versions (${Math.round(stats.prune.bytesRemoved / 1e6)} MB) removed`;
  }

  /** Build the ANN index at the threshold; later, fold new rows into it (optimize) once they are a tenth of the
   *  table or 5 000 rows, and retrain it (new partitions) once the table has grown fourfold since it was trained. */
  private async maybeBuildAnnIndex(): Promise<void> {
    if (!this.table) return;
    const rows = await this.table.countRows();
    if (!this.indexed && rows < this.annThreshold) return;
    const stats = this.indexed ? await this.table.indexStats(VECTOR_INDEX) : undefined;
    if (!this.indexed || (stats && rows >= 4 * stats.numIndexedRows)) {
      await this.buildAnnIndex(rows);
    } else if (stats && stats.numUnindexedRows > Math.min(rows / 10, UNINDEXED_LIMIT)) {
      await this.table.optimize(); // the new rows become one more index segment, until maintenance retrains
    }
  }

  /** Train the ANN index on all rows (one segment), with the filter columns' scalar indices. */
  private async buildAnnIndex(rows: number): Promise<void> {
    const table = this.table!;
    // ~sqrt(rows) partitions; PQ's default sub-vectors (the embedding width is a multiple of 8).
    const numPartitions = Math.max(2, Math.round(Math.sqrt(rows)));
    await table.createIndex("vector", {
      config: lancedb.Index.ivfPq({ distanceType: "cosine", numPartitions }), replace: true, name: VECTOR_INDEX,
    });
    // Searches pre-filter on these columns; without scalar indices that filter reads every row of the table.
    for (const column of FILTER_COLUMNS) {
      await table.createIndex(column, { config: lancedb.Index.bitmap(), replace: true });
    }
    this.indexed = true;
  }
}

// Rows whose `vector` holds an embedding: by weights, or by text where no encoder embedded the LoRA.
const SEARCHABLE = "(encoder_version != '' OR has_text = true)";
const BY_EMBEDDING = {
  weights: "encoder_version != ''", text: "(encoder_version = '' AND has_text = true)", none: "(encoder_version = '' AND has_text = false)",
} as const;

function whereClause(filters: LoraFilters): string {
  const parts: string[] = [];
  if (filters.embedding) parts.push(BY_EMBEDDING[filters.embedding]);
  if (filters.family) parts.push(`family = ${sqlString(filters.family)}`);
  if (filters.state) parts.push(`state = ${sqlString(filters.state)}`);
  if (filters.nsfw === "block") parts.push("nsfw = false");
  if (filters.tags && filters.tags.length > 0) {
    parts.push(`array_has_any(tags, make_array(${filters.tags.map(sqlString).join(", ")}))`);
  }
  return parts.join(" AND ");
}

function sqlString(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}

function toRow(record: LoraRecord, dimension: number): Record<string, unknown> {
  const hasText = !!record.text_vector && record.text_vector.length > 0;
  const { embedding: _derived, ...stored } = record;
  return {
    ...stored, bytes: BigInt(record.bytes), vector: record.vector.length > 0 ? record.vector : new Array(dimension).fill(0),
    text_vector: hasText ? record.text_vector : new Array(dimension).fill(0), has_text: hasText, text_checked: record.text_checked ?? true,
    lists: JSON.stringify(Object.fromEntries(LIST_COLUMNS.map((column) => [column, record[column]]))),
  };
}

function fromRow(row: Record<string, unknown>): LoraSummary & { vector?: number[]; text_vector?: number[] } {
  const list = (value: unknown) => (value && typeof (value as Iterable<unknown>)[Symbol.iterator] === "function"
    ? [...(value as Iterable<unknown>)] : []);
  const record: Record<string, unknown> = {};
  for (const column of COLUMNS) record[column] = row[column];
  // `lists` where the row has it; the list columns themselves in a table being rewritten to add it.
  const lists = typeof row.lists === "string" ? JSON.parse(row.lists) as Record<string, unknown> : row;
  delete record.lists;
  for (const column of LIST_COLUMNS) record[column] = list(lists[column]).map((v) => (typeof v === "bigint" ? Number(v) : v));
  record.bytes = Number(row.bytes);
  record.modules = Number(row.modules);
  record.text_checked = row.text_checked === undefined ? true : Boolean(row.text_checked);
  record.embedding = embeddingKind({ encoder_version: String(row.encoder_version) }, Boolean(row.has_text));
  delete record.has_text;
  if (row.vector !== undefined) record.vector = record.embedding === "none" ? [] : list(row.vector).map(Number);
  if (row.text_vector !== undefined && row.has_text) record.text_vector = list(row.text_vector).map(Number);
  return record as LoraSummary & { vector?: number[]; text_vector?: number[] };
}
