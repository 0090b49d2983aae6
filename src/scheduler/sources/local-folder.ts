// A folder as a crawl source: drop .safetensors files in and the next crawl ingests them. A file is keyed by its
// path, size and modification time, so a replaced file is taken again; a file still being copied in (changed in
// the last few seconds) waits for the next crawl.
import { mkdir, readdir, stat } from "node:fs/promises";
import { join, relative, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import type { CrawlCandidate, CrawlPage, CrawlSource } from "../source.js";

export interface LocalFolderOptions {
  folder: string;
  /** Files modified more recently than this are left for the next crawl. Default 5 s. */
  settleMs?: number;
  now?: () => number;
}

export class LocalFolderSource implements CrawlSource {
  readonly name = "local";

  constructor(private readonly options: LocalFolderOptions) {}

  async page(): Promise<CrawlPage> {
    const root = resolve(this.options.folder);
    await mkdir(root, { recursive: true }); // the drop folder exists from the first crawl on
    const entries = await readdir(root, { recursive: true, withFileTypes: true });
    const now = (this.options.now ?? Date.now)();
    const candidates: CrawlCandidate[] = [];
    for (const entry of entries) {
      if (!entry.isFile() || !entry.name.toLowerCase().endsWith(".safetensors")) continue;
      const path = join(entry.parentPath, entry.name);
      const info = await stat(path);
      if (now - info.mtimeMs < (this.options.settleMs ?? 5000)) continue;
      const name = relative(root, path).replace(/\.safetensors$/i, "");
      candidates.push({ key: `local:${name}:${info.size}:${Math.round(info.mtimeMs)}`, url: pathToFileURL(path).href, name, bytes: info.size });
    }
    return { candidates: candidates.sort((a, b) => a.key.localeCompare(b.key)) };
  }
}
