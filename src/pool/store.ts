// Content-addressed LoRA files: data/pool/<sha256>.safetensors. A file enters as a staged copy under a temporary
// name (read once: hashed, header checked and copied together) and is renamed into place, so a crash never leaves
// a half-written file under a real name. Whoever moves a LoRA's files into place or sweeps them holds its lock
// (.<sha256>.lock), so a sweep never removes what a live process is adding.
import { createHash, randomBytes } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, open, readFile, rename, rm, stat, unlink, utimes } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { z } from "zod";
import {
  DEFAULT_LIMITS, openRegularFile, StreamingHeaderCheck, type SafetensorsHeader, type SafetensorsLimits,
} from "./safetensors.js";
import { processAlive } from "../process-alive.js";

/** sha256 (hex) of the regular file at `path`; anything else is refused (InvalidLoraFileError). */
export async function sha256File(path: string): Promise<string> {
  const { handle } = await openRegularFile(path);
  const hash = createHash("sha256");
  try {
    for await (const chunk of handle.createReadStream({ autoClose: false })) hash.update(chunk as Buffer);
  } finally {
    await handle.close();
  }
  return hash.digest("hex");
}

/** A file copied into the store by `stage`, not yet added: its hash and header, read from the same bytes. */
export interface StagedFile {
  sha256: string;
  /** The temporary copy inside the store folder. */
  path: string;
  header: SafetensorsHeader;
  bytes: number;
}

/** Names of the staged copies this process is writing now: what a sweep must leave alone. */
const staging = new Set<string>();

/** Whether a staged copy in the store folder (`.incoming.<pid>.<hex>.partial`) is dead: its writer is gone, or it
 *  was untouched for an hour. The store is one machine's, so the pid is this machine's. */
export function deadStagedCopy(name: string, ageMs: number): boolean {
  const pid = Number(/^\.incoming\.(\d+)\.[0-9a-f]+\.partial$/.exec(name)?.[1]);
  if (!pid) return false;
  if (pid === process.pid) return !staging.has(name);
  return !processAlive(pid) || ageMs > 3_600_000;
}

/** Another live process holds the LoRA's lock (it is adding that very file) for longer than we wait. */
export class StoreBusyError extends Error {
  override readonly name = "StoreBusyError";
  readonly code = "store-busy";
}

// A live holder refreshes its lock's mtime this often; a lock untouched for STALE_MS is stale whoever holds it.
// The owner's pid decides sooner when it ran on this machine.
const HEARTBEAT_MS = 60_000;
const STALE_MS = 10 * 60_000;
// A lock is created empty and its owner written a moment later: only an empty lock this old is a crash's.
const UNWRITTEN_MS = 10_000;
const POLL_MS = 200;

const lockOwnerSchema = z.object({ pid: z.int().positive(), host: z.string(), nonce: z.string() });
type LockOwner = z.infer<typeof lockOwnerSchema>;

/** Nonces of the locks this process holds, so a lock bearing our pid but not held here is known stale. */
const held = new Set<string>();

/** A held lock on one LoRA's files. */
export class StoreLock {
  private readonly heartbeat: NodeJS.Timeout;

  constructor(readonly path: string, private readonly nonce: string, readonly replacedStale: boolean) {
    held.add(nonce);
    this.heartbeat = setInterval(() => void utimes(path, new Date(), new Date()).catch(() => undefined), HEARTBEAT_MS);
    this.heartbeat.unref();
  }

  async release(): Promise<void> {
    clearInterval(this.heartbeat);
    held.delete(this.nonce);
    if ((await readLock(this.path))?.owner?.nonce === this.nonce) await rm(this.path, { force: true });
  }
}

export class LoraStore {
  /** `root` is the pool folder, e.g. data/pool. */
  constructor(readonly root: string) {}

  pathOf(sha256: string): string {
    return join(this.root, `${checked(sha256)}.safetensors`);
  }

  lockPathOf(sha256: string): string {
    return join(this.root, `.${checked(sha256)}.lock`);
  }

  async has(sha256: string): Promise<boolean> {
    return stat(this.pathOf(sha256)).then((info) => info.isFile(), () => false);
  }

  /**
   * Copy `source` into the store in one read: hashed on the way, its safetensors header checked from the first
   * bytes (then `check`, e.g. that it is a LoRA at all), so a refused file stops being read at once and leaves
   * nothing. The copy waits under a temporary name until `adopt` (under the LoRA's lock) or `discard`.
   */
  async stage(source: string, options: { limits?: SafetensorsLimits; check?: (header: SafetensorsHeader) => void } = {}): Promise<StagedFile> {
    await mkdir(this.root, { recursive: true });
    const { handle, size } = await openRegularFile(source);
    const name = `.incoming.${process.pid}.${randomBytes(6).toString("hex")}.partial`;
    const path = join(this.root, name);
    staging.add(name);
    try {
      const hash = createHash("sha256");
      const header = new StreamingHeaderCheck(size, options.limits ?? DEFAULT_LIMITS);
      let bytes = 0;
      const reading = new Transform({
        transform(chunk: Buffer, _encoding, done) {
          try {
            if (!header.header) {
              header.push(chunk);
              if (header.header) options.check?.(header.header);
            }
          } catch (error) {
            return done(error as Error);
          }
          hash.update(chunk);
          bytes += chunk.length;
          done(null, chunk);
        },
      });
      await pipeline(handle.createReadStream({ autoClose: false, highWaterMark: 1 << 20 }), reading, createWriteStream(path));
      if (bytes !== size) throw new Error(`${source} changed while it was being added (${bytes} bytes read, ${size} expected)`);
      const checked = header.finish();
      return { sha256: hash.digest("hex"), path, header: checked, bytes };
    } catch (error) {
      await rm(path, { force: true });
      throw error;
    } finally {
      staging.delete(name);
      await handle.close();
    }
  }

  /** Move a staged copy into place, under the LoRA's lock the caller holds (the copy is dropped if the store has
   *  the file already); resolves to the stored path. */
  async adopt(staged: StagedFile): Promise<string> {
    const target = this.pathOf(staged.sha256);
    if (await this.has(staged.sha256)) await rm(staged.path, { force: true });
    else await rename(staged.path, target);
    return target;
  }

  /** Drop a staged copy that will not be added. */
  async discard(staged: StagedFile): Promise<void> {
    await rm(staged.path, { force: true });
  }

  async remove(sha256: string): Promise<void> {
    await rm(this.pathOf(sha256), { force: true });
  }

  /** Take the LoRA's lock, waiting up to `waitMs` for a live holder; throws StoreBusyError after that. */
  async lock(sha256: string, waitMs = 30_000): Promise<StoreLock> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const lock = await this.tryLock(sha256);
      if (lock) return lock;
      if (Date.now() >= deadline) {
        const owner = (await readLock(this.lockPathOf(sha256)))?.owner;
        throw new StoreBusyError(`another process${owner ? ` (pid ${owner.pid} on ${owner.host})` : ""} is adding ` +
          `LoRA ${sha256.slice(0, 12)} right now; try again when it is done`);
      }
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  /** The LoRA's lock, or undefined while a live process holds it. A crashed holder's lock is taken over. */
  async tryLock(sha256: string): Promise<StoreLock | undefined> {
    const path = this.lockPathOf(sha256);
    await mkdir(this.root, { recursive: true });
    let replacedStale = false;
    for (let attempt = 0; attempt < 3; attempt++) {
      const nonce = randomBytes(8).toString("hex");
      const handle = await open(path, "wx").catch((error: NodeJS.ErrnoException) => {
        if (error.code === "EEXIST") return undefined;
        throw error;
      });
      if (handle) {
        try {
          await handle.writeFile(JSON.stringify({ pid: process.pid, host: hostname(), nonce } satisfies LockOwner));
        } finally {
          await handle.close();
        }
        return new StoreLock(path, nonce, replacedStale);
      }
      const found = await readLock(path);
      if (!found) continue;
      if (!isStale(found)) return undefined;
      // Two processes may find the same stale lock: remove it only if it is still the one judged stale.
      if (JSON.stringify((await readLock(path))?.owner) === JSON.stringify(found.owner)) await unlink(path).catch(() => undefined);
      replacedStale = true;
    }
    return undefined;
  }
}

function checked(sha256: string): string {
  if (!/^[0-9a-f]{64}$/.test(sha256)) throw new Error(`not a sha256: ${JSON.stringify(sha256)}`);
  return sha256;
}

/** The lock's owner (undefined while it is being written) and age, or undefined if there is no lock. */
async function readLock(path: string): Promise<{ owner: LockOwner | undefined; ageMs: number } | undefined> {
  try {
    const [text, info] = await Promise.all([readFile(path, "utf8"), stat(path)]);
    const owner = lockOwnerSchema.safeParse(parseJson(text)).data;
    return { owner, ageMs: Date.now() - info.mtimeMs };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function isStale({ owner, ageMs }: { owner: LockOwner | undefined; ageMs: number }): boolean {
  if (ageMs > STALE_MS) return true;
  if (!owner) return ageMs > UNWRITTEN_MS;
  if (owner.host !== hostname()) return false;
  if (owner.pid === process.pid) return !held.has(owner.nonce);
  return !processAlive(owner.pid);
}
