// `autolora crawl` end to end: the real worker embeds 60 real proving-ground LoRAs that a local stand-in of
// Civitai lists and serves, the report says where the time went, and a second crawl adds nothing.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect, it } from "vitest";
import { main } from "../src/cli/main.js";
import { startFakeCivitai } from "../src/testing/fake-lora-sites.js";
import { describeRequiring, pythonWorker } from "./helpers/requirements.js";

const root = join(import.meta.dirname, "..");
const poolFiles = existsSync(join(root, "bundle", "pool")) ? readdirSync(join(root, "bundle", "pool")).filter((name) => name.endsWith(".safetensors")).sort() : [];

async function cli(env: Record<string, string>, ...argv: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await main(argv, { stdout: (line) => out.push(line), stderr: (line) => err.push(line), env });
  return { code, out, err };
}

const sixtyPoolFiles = { met: poolFiles.length >= 60, unmet: "needs 60 LoRAs in bundle/pool of the committed bundle; restore it with git checkout -- bundle" };
describeRequiring(pythonWorker, sixtyPoolFiles)("autolora crawl", () => {
  it("crawls 60 LoRAs from a Civitai stand-in into the pool, then finds nothing new", async () => {
    const site = await startFakeCivitai({ count: 60, pageSize: 25, files: (n) => readFileSync(join(root, "bundle", "pool", poolFiles[n - 1]!)) });
    const env = { AUTOLORA_DATA_DIR: await mkdtemp(join(tmpdir(), "autolora-cli-crawl-")), AUTOLORA_SCHEDULER__ALLOW_LOOPBACK: "true" };
    try {
      const first = await cli(env, "crawl", "--source", "civitai", "--base-url", site.url, "--json");
      expect(first.code, first.err.join("\n")).toBe(0);
      const [report] = JSON.parse(first.out[0]!);
      console.log(`crawl of 60: ${JSON.stringify(report.timings)}, ${report.bytes} bytes`);
      expect(report).toMatchObject({ source: "civitai", pages: 3, listed: 60, added: 60, refused: [], failed: [], reachedEnd: true });
      expect(report.timings.download_ms + report.timings.ingest_ms + report.timings.listing_ms).toBeLessThanOrEqual(report.timings.total_ms + 5);
      const listed = await cli(env, "pool", "list", "--json");
      expect(listed.out).toHaveLength(60);
      const again = await cli(env, "crawl", "--source", "civitai", "--base-url", site.url);
      expect(again.out[0]).toMatch(/^civitai: 0 added, 0 already in the pool, 60 seen before, 0 refused, 0 to retry/);
      expect((await cli(env, "crawl", "--source", "nowhere")).err).toEqual([expect.stringMatching(/^no crawl source nowhere; the sources are civitai, huggingface, local/)]);
    } finally {
      await site.close();
    }
  }, 180_000);
});
