// What interrupted adds and removals leave behind, removed when the pool is opened: stored files with no index
// row, partial copies, the locks of processes that died, and downloads' temporary files nobody is writing. A
// LoRA's files are only touched under its lock (see store.ts), so a live process's add is never swept.
import { readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import type { LoraIndex } from "./index.js";
import { deadStagedCopy, type LoraStore } from "./store.js";

export interface SweepOptions {
  /** The downloads' temporary folder (data/tmp), if any. */
  downloads?: string;
  /** A download's temporary file untouched this long is a dead process's. Default 1 hour (a live download
   *  writes all the time, and is copied into the store within seconds of its end). */
  downloadAgeMs?: number;
  /** Gets one line when anything was removed. */
  log?: (line: string) => void;
}

export interface SweepReport {
  /** sha256 of the stored files removed for having no index row. */
  orphans: string[];
  partials: number;
  staleLocks: number;
  downloads: number;
}

const FINAL = /^([0-9a-f]{64})\.safetensors$/;
const PARTIAL = /^\.([0-9a-f]{64})\.[0-9a-f]+\.partial$/;
const LOCK = /^\.([0-9a-f]{64})\.lock$/;
const DOWNLOAD = /^download-.+\.part$/;
const STAGED = /^\.incoming\..+\.partial$/;

export async function sweepPool(pool: { store: LoraStore; index: LoraIndex }, options: SweepOptions = {}): Promise<SweepReport> {
  const report: SweepReport = { orphans: [], partials: 0, staleLocks: 0, downloads: 0 };
  const names = await listFolder(pool.store.root);
  const known = await pool.index.ids();
  const suspects = new Set<string>();
  for (const name of names) {
    const final = FINAL.exec(name)?.[1];
    if (final && !known.has(final)) suspects.add(final);
    const other = (PARTIAL.exec(name) ?? LOCK.exec(name))?.[1];
    if (other) suspects.add(other);
  }
  for (const name of names.filter((entry) => STAGED.test(entry))) {
    const path = join(pool.store.root, name);
    const info = await stat(path).catch(() => undefined);
    if (info && deadStagedCopy(name, Date.now() - info.mtimeMs)) {
      await rm(path, { force: true });
      report.partials += 1;
    }
  }
  for (const sha256 of suspects) {
    const lock = await pool.store.tryLock(sha256);
    if (!lock) continue; // a live process is adding it
    try {
      if (lock.replacedStale) report.staleLocks += 1;
      // Partial copies are written only under the lock, so with the lock held here they are all dead.
      for (const name of names.filter((entry) => PARTIAL.exec(entry)?.[1] === sha256)) {
        await rm(join(pool.store.root, name), { force: true });
        report.partials += 1;
      }
      // Checked again under the lock: an add may have finished since the ids were read.
      if (await pool.store.has(sha256) && !(await pool.index.get(sha256))) {
        await pool.store.remove(sha256);
        report.orphans.push(sha256);
      }
    } finally {
      await lock.release();
    }
  }
  if (options.downloads) report.downloads = await sweepDownloads(options.downloads, options.downloadAgeMs ?? 3_600_000);
  const removed = [
    counted(report.orphans.length, "stored file with no index row", "stored files with no index row") +
      (report.orphans.length ? ` (${report.orphans.map((sha256) => sha256.slice(0, 12)).join(", ")})` : ""),
    counted(report.partials, "partial copy", "partial copies"),
    counted(report.staleLocks, "lock of a process that died", "locks of processes that died"),
    counted(report.downloads, "abandoned download", "abandoned downloads"),
  ].filter(Boolean);
  if (removed.length > 0) options.log?.(`[pool] swept what interrupted adds left: ${removed.join(", ")}`);
  return report;
}

/** "1 partial copy", "2 partial copies", or "" for none. */
function counted(count: number, one: string, many: string): string {
  return count === 0 ? "" : `${count} ${count === 1 ? one : many}`;
}

async function sweepDownloads(folder: string, ageMs: number): Promise<number> {
  let removed = 0;
  for (const name of (await listFolder(folder)).filter((entry) => DOWNLOAD.test(entry))) {
    const path = join(folder, name);
    const info = await stat(path).catch(() => undefined);
    if (info && Date.now() - info.mtimeMs > ageMs) {
      await rm(path, { force: true });
      removed += 1;
    }
  }
  return removed;
}

async function listFolder(folder: string): Promise<string[]> {
  try {
    return await readdir(folder);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw error;
  }
}
