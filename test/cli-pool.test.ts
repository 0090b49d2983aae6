// The admin's pool commands end to end: a real worker embeds, LanceDB under a temporary data folder keeps them.
import { copyFile, mkdtemp, readdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect, it } from "vitest";
import { main } from "../src/cli/main.js";
import { describeRequiring, pythonWorker } from "./helpers/requirements.js";

const root = join(import.meta.dirname, "..");
const pool = join(root, "bundle", "pool");

async function cli(env: Record<string, string>, ...argv: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await main(argv, { stdout: (line) => out.push(line), stderr: (line) => err.push(line), env });
  return { code, out, err };
}

describeRequiring(pythonWorker)("autolora pool add/list/block/remove", () => {
  it("manages the pool from the command line", async () => {
    const data = await mkdtemp(join(tmpdir(), "autolora-cli-pool-"));
    const env = { AUTOLORA_DATA_DIR: data };
    const added = await cli(env, "pool", "add", join(pool, "shape-hexagon-01.safetensors"),
      join(pool, "style-striped-01.safetensors"), join(root, "README.md"), "--tags", "demo, world", "--json");
    expect(added.code).toBe(2); // README.md is not a LoRA; the other two go in
    const reports = added.out.map((line) => JSON.parse(line));
    expect(reports.map((r) => [r.status, r.name, r.family, r.tags])).toEqual([
      ["added", "shape-hexagon-01", "proving-ground", ["demo", "world"]],
      ["added", "style-striped-01", "proving-ground", ["demo", "world"]],
    ]);
    expect(added.err.filter((line) => line.includes("README.md"))).toEqual([
      expect.stringMatching(/README\.md: not a safetensors file/)]);
    expect((await readdir(join(data, "pool"))).sort()).toEqual(reports.map((r) => `${r.id}.safetensors`).sort());

    const found = await cli(env, "pool", "search", "six-sided", "hexagon", "--k", "2", "--json");
    expect(found.code).toBe(0);
    expect(found.out.map((line) => JSON.parse(line).name)[0]).toBe("shape-hexagon-01");
    // Why it was picked: the score's parts (its tags are its text here; nobody has rated it) and the word it covers.
    const best = JSON.parse(found.out[0]!);
    expect(best.parts).toEqual({ weights: expect.any(Number), text: expect.any(Number), rating: 0, score: best.similarity });
    expect(best.covers.part).toMatch(/^(six-sided|hexagon)$/);
    const hexagon = reports[0].id as string;
    expect((await cli(env, "pool", "block", hexagon.slice(0, 10))).out).toEqual([`blocked ${hexagon}`]);
    const blocked = await cli(env, "pool", "list", "--state", "blocked", "--json");
    expect(blocked.out.map((line) => JSON.parse(line).name)).toEqual(["shape-hexagon-01"]);
    expect((await cli(env, "pool", "remove", hexagon)).code).toBe(0);
    const left = await cli(env, "pool", "list");
    expect(left.out).toHaveLength(1);
    expect(left.out[0]).toMatch(/active +proving-ground +\w+ +rank \d.*style-striped-01  \[demo, world\]/);
    expect(await readdir(join(data, "pool"))).toEqual([`${reports[1].id}.safetensors`]);
  }, 120_000);

  it("adds the LoRAs a manifest describes, refusing a malformed manifest before adding any, and re-embeds", async () => {
    const data = await mkdtemp(join(tmpdir(), "autolora-cli-pool-"));
    const env = { AUTOLORA_DATA_DIR: data };
    const manifest = join(data, "manifest.json");
    await writeFile(manifest, JSON.stringify({ loras: [
      { file: join(pool, "shape-star-01.safetensors"), name: "stars", tags: ["shape"], captions: ["a star"] },
      { name: "no file" },
    ] }));
    const refused = await cli(env, "pool", "add", "--manifest", manifest);
    expect([refused.code, refused.err]).toEqual([2, [`autolora pool add: ${manifest}: loras[1] has no "file"`]]);
    expect((await cli(env, "pool", "list")).out).toEqual([]);
    // Files relative to the manifest, what it says of each, one worker start for all.
    await copyFile(join(pool, "shape-star-01.safetensors"), join(data, "star.safetensors"));
    await writeFile(manifest, JSON.stringify({ loras: [
      { file: "star.safetensors", name: "stars", tags: ["shape"], captions: ["a star"], concept: "star" },
      { file: join(pool, "style-neon-01.safetensors"), trigger_words: ["glow"] },
    ] }));
    const added = await cli(env, "pool", "add", "--manifest", manifest, "--json");
    expect(added.code, added.err.join("\n")).toBe(0);
    expect(added.out.map((line) => JSON.parse(line)).map((r) => [r.name, r.tags, r.trigger_words, r.captions, r.embedding])).toEqual([
      ["stars", ["shape"], [], ["a star"], "weights"], ["style-neon-01", [], ["glow"], [], "weights"]]);
    expect(added.out.map((line) => JSON.parse(line).path)).toEqual([join(data, "star.safetensors"), join(pool, "style-neon-01.safetensors")]);
    const reembedded = await cli(env, "pool", "reembed", "--json");
    expect([reembedded.code, JSON.parse(reembedded.out[0]!).reembedded]).toEqual([0, 0]); // all embedded by this encoder
  }, 120_000);

  it("says what is wrong with an id, an option or the configuration", async () => {
    const env = { AUTOLORA_DATA_DIR: await mkdtemp(join(tmpdir(), "autolora-cli-pool-")) };
    expect((await cli(env, "pool", "remove", "xyz")).err[0]).toMatch(/at least its first 8 hex characters/);
    expect((await cli(env, "pool", "block", "0123456789")).err).toEqual(["no LoRA 0123456789 in the pool"]);
    expect((await cli(env, "pool", "list", "--colour", "red")).err[0]).toMatch(/autolora pool list: Unknown option '--colour'/);
    const bad = await cli({ ...env, AUTOLORA_RETRIEVAL__K: "many" }, "pool", "list");
    expect(bad.code).toBe(2);
    expect(bad.err[0]).toMatch(/invalid configuration:\n {2}- retrieval\.k: .* \(from AUTOLORA_RETRIEVAL__K\)/);
  });
});
