// Content-addressed LoRA files: data/pool/<sha256>.safetensors. A file enters under a temporary name and is
// renamed into place, so a crash never leaves a half-written file under a real name.
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { copyFile, mkdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";

export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

export class LoraStore {
  /** `root` is the pool folder, e.g. data/pool. */
  constructor(readonly root: string) {}

  pathOf(sha256: string): string {
    if (!/^[0-9a-f]{64}$/.test(sha256)) throw new Error(`not a sha256: ${JSON.stringify(sha256)}`);
    return join(this.root, `${sha256}.safetensors`);
  }

  async has(sha256: string): Promise<boolean> {
    return stat(this.pathOf(sha256)).then((info) => info.isFile(), () => false);
  }

  /** Copy `source` (whose sha256 the caller computed) into the store; `created` is false if it was there. */
  async put(source: string, sha256: string): Promise<{ path: string; created: boolean }> {
    const target = this.pathOf(sha256);
    if (await this.has(sha256)) return { path: target, created: false };
    await mkdir(this.root, { recursive: true });
    const partial = join(this.root, `.${sha256}.${randomBytes(4).toString("hex")}.partial`);
    try {
      await copyFile(source, partial);
      const copied = await sha256File(partial);
      if (copied !== sha256) throw new Error(`${source} changed while it was being added (sha256 ${copied}, expected ${sha256})`);
      await rename(partial, target);
    } finally {
      await rm(partial, { force: true });
    }
    return { path: target, created: true };
  }

  async remove(sha256: string): Promise<void> {
    await rm(this.pathOf(sha256), { force: true });
  }
}
