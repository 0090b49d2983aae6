// Crawling community LoRAs from local stand-ins of Civitai and the Hugging Face Hub that answer like the real
// APIs and serve real safetensors files: every page to the end, a 429 waited out as Retry-After says, each bad
// file refused for its reason (hash, size, private or plain-http URL), a re-crawl that changes nothing, and a crash
// half way that resumes without duplicates.
import { mkdir, mkdtemp, readdir, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { crawl } from "../src/scheduler/crawler.js";
import { CivitaiSource } from "../src/scheduler/sources/civitai.js";
import { HuggingFaceSource } from "../src/scheduler/sources/huggingface.js";
import { LocalFolderSource } from "../src/scheduler/sources/local-folder.js";
import { StateFile } from "../src/scheduler/state.js";
import { startFakeCivitai, startFakeHub } from "../src/testing/fake-lora-sites.js";
import { fakeHost } from "../src/testing/fake-host.js";

let host: Awaited<ReturnType<typeof fakeHost>>;
beforeAll(async () => {
  host = await fakeHost();
}, 60_000);
afterAll(async () => host?.stop());

const freshState = async () => new StateFile(join(await mkdtemp(join(tmpdir(), "autolora-crawl-")), "state.json"));
const options = (state: StateFile, extra: Partial<Parameters<typeof crawl>[1]> = {}) => ({
  state, ingest: host.ingest, tempDir: join(host.data, "tmp"), maxBytes: 1_000_000, allowLoopback: true, sleep: async () => undefined, ...extra,
});

describe("crawling Civitai", () => {
  it("pages to the end, waits out a 429, refuses bad files for their reason, and a re-crawl adds nothing", async () => {
    const site = await startFakeCivitai({
      count: 25, pageSize: 10, wrongHash: [5], oversized: [7], oversizeBytes: 2_000_000, privateUrl: [11], httpUrl: [12],
      rateLimitFirstListing: 2, rateLimitDownloads: [3], token: "civitai-key",
    });
    const downloadWaits: number[] = [];
    const waits: number[] = [];
    const source = new CivitaiSource({
      baseUrl: site.url, baseModels: ["Flux.1 D"], apiKey: "civitai-key", retry: { sleep: async (ms) => { waits.push(ms); } },
    });
    const state = await freshState();
    const before = await host.index.count({});
    try {
      const report = await crawl(source, options(state, { sleep: async (ms) => { downloadWaits.push(ms); } }));
      expect(waits).toEqual([2000]); // the listing's 429
      expect(downloadWaits).toEqual([3000]); // a download's 429
      expect(report).toMatchObject({ pages: 3, listed: 25, added: 21, existed: 0, skipped: 0, failed: [], reachedEnd: true });
      expect(Object.fromEntries(report.refused.map((entry) => [entry.key, entry.reason]))).toEqual({
        "civitai:version:9005": expect.stringMatching(/has sha256 .*, but the source says/),
        "civitai:version:9007": expect.stringMatching(/is \d+ bytes; the limit is 1000000$/),
        "civitai:version:9011": expect.stringMatching(/10\.0\.0\.8 is in 10\.0\.0\.0\/8 \(private use\): only public addresses/),
        "civitai:version:9012": expect.stringMatching(/only https:\/\/ URLs are downloaded/),
      });
      expect(await host.index.count({})).toBe(before + 21);
      const [style9] = await host.index.findByName("Style 9 (v1)", 1);
      expect(style9).toMatchObject({ source: "civitai", trigger_words: ["style9"], captions: ["a lighthouse in style9, dusk"], nsfw: false });
      expect(style9!.tags).toEqual(["style", "series-0"]);
      expect((await host.index.findByName("Style 14 (v1)", 1))[0]!.nsfw).toBe(true); // nsfwLevel 8 (X)
      expect(site.requests.some((request) => request.includes("training"))).toBe(false); // only the primary safetensors

      const again = await crawl(source, options(state));
      expect(again).toMatchObject({ added: 0, existed: 0, skipped: 25, refused: [], reachedEnd: true });
      expect(await host.index.count({})).toBe(before + 21);
      expect(site.requests.filter((request) => request.startsWith("GET /files/")).length).toBe(21 + 2 + 1); // none twice, but the wrong-hash and oversized ones once and the 429 retried once
    } finally {
      await site.close();
    }
  }, 60_000);
});

describe("crawling the Hugging Face Hub", () => {
  it("resumes a crawl that crashed half way without duplicates", async () => {
    const site = await startFakeHub({ count: 20, pageSize: 5 });
    const source = new HuggingFaceSource({ baseUrl: site.url, baseModel: "black-forest-labs/FLUX.1-dev" });
    const state = await freshState();
    const before = await host.index.count({});
    let calls = 0;
    try {
      const crashing = options(state, {
        ingest: async (path, metadata) => {
          if (++calls === 8) throw new Error("the worker died");
          return host.ingest(path, metadata);
        },
      });
      await expect(crawl(source, crashing)).rejects.toThrow("the worker died");
      const saved = (await state.read()).sources.huggingface!;
      expect(Object.keys(saved.seen)).toHaveLength(7);
      expect(saved.cursor).toMatch(/cursor=15/); // the second page, where it stopped
      expect(await host.index.count({})).toBe(before + 7);

      const resumed = await crawl(source, options(state));
      expect(resumed).toMatchObject({ added: 13, skipped: 2, reachedEnd: true });
      expect(await host.index.count({})).toBe(before + 20);
      // One stored file per ingested LoRA (the host's three seeded records have none): nothing half in.
      expect((await readdir(join(host.data, "pool"))).filter((name) => name.endsWith(".safetensors")).length).toBe(await host.index.count({}) - 3);
      const [repo] = await host.index.findByName("painter/flux-style-9", 1);
      expect(repo).toMatchObject({ source: "huggingface", license: "other", nsfw: true, captions: ["style9", "a teapot, style9"] });
      expect((await crawl(source, options(state)))).toMatchObject({ added: 0, skipped: 20 });
    } finally {
      await site.close();
    }
  }, 60_000);

  it("refuses a redirect to a private or plain-http address", async () => {
    const site = await startFakeHub({ count: 3, privateUrl: [2], httpUrl: [3] });
    try {
      const report = await crawl(new HuggingFaceSource({ baseUrl: site.url, baseModel: "black-forest-labs/FLUX.1-dev" }), options(await freshState()));
      expect(report.refused.map((entry) => entry.reason)).toEqual([
        expect.stringMatching(/only https:\/\/ URLs/), expect.stringMatching(/10\.0\.0\.8 is in 10\.0\.0\.0\/8 \(private use\)/)]);
    } finally {
      await site.close();
    }
  }, 30_000);
});

describe("crawling a local folder", () => {
  it("ingests the LoRAs dropped in, refuses what is not one, and waits for files still being written", async () => {
    const folder = await mkdtemp(join(tmpdir(), "autolora-incoming-"));
    await mkdir(join(folder, "sub"));
    const { diffusersLora } = await import("../src/testing/safetensors.js");
    await writeFile(join(folder, "a.safetensors"), diffusersLora(192, 4, 1, { local: "a" }));
    await writeFile(join(folder, "sub", "b.safetensors"), diffusersLora(192, 4, 1, { local: "b" }));
    await writeFile(join(folder, "notes.safetensors"), "not a LoRA at all");
    await writeFile(join(folder, "fresh.safetensors"), diffusersLora(192, 4, 1, { local: "fresh" }));
    const old = new Date(Date.now() - 60_000);
    for (const name of ["a.safetensors", "sub/b.safetensors", "notes.safetensors"]) await utimes(join(folder, name), old, old);
    const report = await crawl(new LocalFolderSource({ folder }), options(await freshState()));
    expect(report).toMatchObject({ added: 2, listed: 3 });
    expect(report.refused).toEqual([{ key: expect.stringMatching(/^local:notes:/), reason: expect.stringMatching(/header|safetensors/) }]);
  }, 30_000);
});
