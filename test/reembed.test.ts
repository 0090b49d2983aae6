// A new LoRA encoder: every LoRA embedded by the old one is re-embedded in the background while searches keep
// being answered, and LoRAs that cannot be re-embedded (no stored file) are reported, not fatal.
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { reembedPool } from "../src/pool/reembed.js";
import { fakeHost } from "../src/testing/fake-host.js";
import { diffusersLora } from "../src/testing/safetensors.js";

let host: Awaited<ReturnType<typeof fakeHost>>;
beforeAll(async () => {
  host = await fakeHost();
}, 60_000);
afterAll(async () => host?.stop());

describe("re-embedding the pool", () => {
  it("replaces every old embedding while search keeps answering", async () => {
    const folder = await mkdtemp(join(tmpdir(), "autolora-reembed-"));
    for (let n = 0; n < 40; n++) {
      const file = join(folder, `${n}.safetensors`);
      await writeFile(file, diffusersLora(192, 4, 1, { reembed: String(n) }));
      await host.ingest(file, { name: `lora ${n}` });
    }
    // Pretend an older encoder made them.
    const ingested = (await host.index.list({}, 1000)).filter((lora) => lora.name.startsWith("lora "));
    for (const lora of ingested) {
      const record = (await host.index.get(lora.id))!;
      await host.index.upsert([{ ...record, encoder_version: "enc-old" }]);
    }
    expect((await host.index.embeddedByOther("fake-enc", 1000)).length).toBe(43); // the 40, and 3 seeded by the fake host

    let searching = true;
    let answered = 0;
    const failures: unknown[] = [];
    const load = (async () => {
      while (searching) {
        try {
          const { hits } = await host.context.retriever.retrieve("hexagon shapes", { k: 3, minSimilarity: -1 });
          if (hits.length === 3) answered += 1;
        } catch (error) {
          failures.push(error);
        }
      }
    })();
    const report = await reembedPool({ index: host.index, store: host.store, encoderVersion: "fake-enc", embed: host.embed });
    searching = false;
    await load;
    expect(report.reembedded).toBe(40);
    expect(report.skipped.map((entry) => entry.reason)).toEqual(Array(3).fill("its file is not in the store"));
    expect(failures).toEqual([]);
    expect(answered).toBeGreaterThan(5);
    expect((await host.index.embeddedByOther("fake-enc", 1000)).map((lora) => lora.name).sort()).toEqual(
      ["diagonal stripes", "five-pointed stars", "hexagon shapes"]);
    // Done is done: a second run finds nothing to do.
    expect((await reembedPool({ index: host.index, store: host.store, encoderVersion: "fake-enc", embed: host.embed })).reembedded).toBe(0);
  }, 60_000);
});
