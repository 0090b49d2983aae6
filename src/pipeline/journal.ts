// Accepted /imagine jobs on disk until their grid is posted, so a host that crashes or restarts takes them up
// again: one small JSON file per job under <data_dir>/jobs, written whole (temporary file, then rename) once the
// chat has acknowledged the job, updated when its LoRAs are chosen, removed once its answer is shown.
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";

export const journalEntrySchema = z.object({
  /** The pipeline's job id, also the generation's id and the Redis job's. */
  id: z.string().regex(/^[\w-]{1,64}$/),
  /** The chat adapter that acknowledged it ("web", "slack", "discord", …), which alone can answer it. */
  adapter: z.string().min(1),
  /** Where the acknowledgement is, as that adapter writes it, so the answer edits the same message. */
  address: z.unknown(),
  prompt: z.string(),
  user: z.string(),
  seeds: z.array(z.number().int().nonnegative()),
  /** The chosen LoRAs' ids, once chosen (a job taken up again uses them rather than choosing anew). */
  loras: z.array(z.string()).optional(),
  k: z.number().int().optional(),
  fusion: z.string().optional(),
  width: z.number().int().optional(),
  height: z.number().int().optional(),
  title: z.string().optional(),
  accepted_at: z.string(),
});
export type JournalEntry = z.infer<typeof journalEntrySchema>;

export class JobJournal {
  private ready: Promise<unknown> | undefined;
  /** Per job, its writes in order: an update still writing must not bring back a job already finished. */
  private readonly chains = new Map<string, Promise<unknown>>();
  /** Set while the host stops: jobs that end because of it stay in the journal, to be taken up at the next start. */
  stopping = false;

  constructor(private readonly folder: string, readonly log: (line: string) => void = () => undefined) {}

  async accept(entry: JournalEntry): Promise<void> {
    const valid = journalEntrySchema.parse(entry);
    await this.inTurn(valid.id, () => this.write(valid));
  }

  /** Record what became known about a job (its LoRAs); nothing if it is no longer journaled. */
  update(id: string, patch: Partial<Omit<JournalEntry, "id">>): Promise<void> {
    return this.inTurn(id, async () => {
      const entry = await this.read(id);
      if (entry) await this.write({ ...entry, ...patch });
    });
  }

  /** Its answer was shown (or it was cancelled): forget it. */
  finish(id: string): Promise<void> {
    return this.inTurn(id, () => rm(this.path(id), { force: true }));
  }

  /** Every journaled job, oldest first. A file that cannot be read is set aside (renamed .bad) and said so. */
  async entries(): Promise<JournalEntry[]> {
    const names = await readdir(this.folder).catch(() => [] as string[]);
    const found: JournalEntry[] = [];
    for (const name of names.filter((file) => file.endsWith(".json"))) {
      const entry = await this.read(name.slice(0, -".json".length));
      if (entry) found.push(entry);
    }
    return found.sort((a, b) => a.accepted_at.localeCompare(b.accepted_at));
  }

  private inTurn(id: string, work: () => Promise<void>): Promise<void> {
    const done = (this.chains.get(id) ?? Promise.resolve()).catch(() => undefined).then(work);
    this.chains.set(id, done);
    void done.catch(() => undefined).finally(() => {
      if (this.chains.get(id) === done) this.chains.delete(id);
    });
    return done;
  }

  private async read(id: string): Promise<JournalEntry | undefined> {
    const path = this.path(id);
    const text = await readFile(path, "utf8").catch(() => undefined);
    if (text === undefined) return undefined;
    const parsed = journalEntrySchema.safeParse(safeJson(text));
    if (parsed.success) return parsed.data;
    this.log(`[jobs] ${path} is not a job this host can take up again; set aside as ${path}.bad`);
    await rename(path, `${path}.bad`).catch(() => undefined);
    return undefined;
  }

  private async write(entry: JournalEntry): Promise<void> {
    this.ready ??= mkdir(this.folder, { recursive: true });
    await this.ready;
    const path = this.path(entry.id);
    await writeFile(`${path}.tmp`, JSON.stringify(entry));
    await rename(`${path}.tmp`, path);
  }

  private path(id: string): string {
    if (!/^[\w-]{1,64}$/.test(id)) throw new Error(`not a job id: ${JSON.stringify(id)}`);
    return join(this.folder, `${id}.json`);
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
