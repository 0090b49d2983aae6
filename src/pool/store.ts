// Content-addressed LoRA files: data/pool/<sha256>.safetensors. A file enters under a temporary name and is
// renamed into place, so a crash never leaves a half-written file under a real name. Whoever adds or sweeps a
// LoRA's files holds its lock (.<sha256>.lock), so a sweep never removes what a live process is adding.
import { createHash, randomBytes } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, open, readFile, rename, rm, stat, unlink, utimes } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { z } from "zod";
import { openRegularFile } from "./safetensors.js";
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
   * Copy `source` (whose sha256 the caller computed) into the store, unless it is there, under the LoRA's lock
   * the caller holds; resolves to the stored path. The copy is hashed on the way and refused if `source` changed.
   */
  async put(source: string, sha256: string): Promise<string> {
    const target = this.pathOf(sha256);
    if (await this.has(sha256)) return target;
    await mkdir(this.root, { recursive: true });
    const { handle } = await openRegularFile(source);
    const partial = join(this.root, `.${sha256}.${randomBytes(4).toString("hex")}.partial`);
    try {
      const hash = createHash("sha256");
      const hashing = new Transform({
        transform(chunk: Buffer, _encoding, done) {
          hash.update(chunk);
          done(null, chunk);
        },
      });
      await pipeline(handle.createReadStream({ autoClose: false }), hashing, createWriteStream(partial));
      const copied = hash.digest("hex");
      if (copied !== sha256) throw new Error(`${source} changed while it was being added (sha256 ${copied}, expected ${sha256})`);
      await rename(partial, target);
    } finally {
      await handle.close();
      await rm(partial, { force: true });
    }
    return target;
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
