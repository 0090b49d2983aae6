// Format and family detection on the committed pool's real files (every community format it holds) and on
// made-up FLUX-sized headers; `autolora pool inspect` prints it or exits 2 with one line.
import { readFileSync } from "node:fs";
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { main } from "../src/cli/main.js";
import { inspectLora } from "../src/pool/inspect.js";
import { readSafetensorsHeader, validateSafetensorsBytes } from "../src/pool/safetensors.js";
import { diffusersLora, safetensorsFile } from "../src/testing/safetensors.js";

interface PoolRecord { id: string; format: string; rank: number; subset: string; file: string }
const bundle = join(import.meta.dirname, "..", "bundle");
const records: PoolRecord[] = JSON.parse(readFileSync(join(bundle, "pool", "pool.json"), "utf8")).loras;
const onePerFormat = [...new Map(records.map((record) => [record.format, record])).values()];

async function run(...argv: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await main(argv, { stdout: (line) => out.push(line), stderr: (line) => err.push(line) });
  return { code, out, err };
}

describe("LoRA inspection", () => {
  it("covers all five community formats in the committed pool", () => {
    expect(onePerFormat.map((record) => record.format).sort()).toEqual(["bfl", "comfyui", "diffusers", "kohya", "xlabs"]);
  });

  it.each(onePerFormat)("recognises the pool's $format file $id as a proving-ground LoRA", async (record) => {
    const lora = inspectLora(await readSafetensorsHeader(join(bundle, record.file)));
    expect(lora.format).toBe(record.format);
    expect(lora.family).toBe("proving-ground");
    expect(lora.unknownKeys).toEqual([]);
    expect(lora.modules).toBeGreaterThan(0);
    // Fused tensors stack the factors of q/k/v (3×) or, in single blocks' linear1, of q/k/v/proj_mlp (4×).
    expect(lora.ranks.every((rank) => [1, 3, 4].some((times) => rank === times * record.rank)), `${lora.ranks}`).toBe(true);
    expect(lora.ranks).toContain(record.rank);
  });

  it("tells FLUX.1 from the proving ground by hidden width and block count", () => {
    expect(inspectLora(validateSafetensorsBytes(diffusersLora(3072, 4, 1))).family).toBe("flux");
    expect(inspectLora(validateSafetensorsBytes(diffusersLora(192, 4, 1))).family).toBe("proving-ground");
    expect(inspectLora(validateSafetensorsBytes(diffusersLora(192, 4, 3))).family).toBeNull(); // only 2 double blocks
    expect(inspectLora(validateSafetensorsBytes(diffusersLora(100, 4, 1))).family).toBeNull();
  });

  it("keeps unknown keys aside and refuses files that are not LoRAs, saying why", () => {
    const withExtra = safetensorsFile([
      { name: "transformer.transformer_blocks.0.attn.to_q.lora_A.weight", shape: [4, 192] },
      { name: "transformer.transformer_blocks.0.attn.to_q.lora_B.weight", shape: [192, 4] },
      { name: "text_encoder.some.weight", shape: [2] },
    ]);
    expect(inspectLora(validateSafetensorsBytes(withExtra)).unknownKeys).toEqual(["text_encoder.some.weight"]);
    const checkpoint = safetensorsFile([{ name: "model.diffusion_model.input_blocks.0.weight", shape: [2, 2] }]);
    expect(() => inspectLora(validateSafetensorsBytes(checkpoint))).toThrow(/no tensor name matches a FLUX LoRA format/);
    const halfPair = safetensorsFile([{ name: "transformer.transformer_blocks.0.attn.to_q.lora_A.weight", shape: [4, 192] }]);
    expect(() => inspectLora(validateSafetensorsBytes(halfPair))).toThrow(/has a down factor but no up factor/);
    const rankClash = safetensorsFile([
      { name: "transformer.transformer_blocks.0.attn.to_q.lora_A.weight", shape: [4, 192] },
      { name: "transformer.transformer_blocks.0.attn.to_q.lora_B.weight", shape: [192, 8] },
    ]);
    expect(() => inspectLora(validateSafetensorsBytes(rankClash))).toThrow(/do not share a non-zero rank/);
    const integer = safetensorsFile([
      { name: "transformer.transformer_blocks.0.attn.to_q.lora_A.weight", dtype: "I32", shape: [4, 192] },
      { name: "transformer.transformer_blocks.0.attn.to_q.lora_B.weight", shape: [192, 4] },
    ]);
    expect(() => inspectLora(validateSafetensorsBytes(integer))).toThrow(/2-D float matrix/);
  });
});

describe("autolora pool inspect", () => {
  it("prints the format, family, modules, ranks and sha256 as JSON", async () => {
    const record = onePerFormat.find((r) => r.format === "kohya")!;
    const { code, out, err } = await run("pool", "inspect", join(bundle, record.file), "--json");
    expect(code).toBe(0);
    expect(err).toEqual([]);
    const report = JSON.parse(out.join("\n"));
    expect(report).toMatchObject({ format: "kohya", family: "proving-ground", ranks: [record.rank], unknown_keys: [] });
    expect(report.sha256).toMatch(/^[0-9a-f]{64}$/);
  });

  it("exits 2 with one line for a pickle, a missing file and a bad argument list", async () => {
    const folder = await mkdtemp(join(tmpdir(), "autolora-cli-"));
    const pickle = join(folder, "model.ckpt");
    await writeFile(pickle, Buffer.concat([Buffer.from("PK\x03\x04"), Buffer.alloc(100)]));
    for (const argv of [["pool", "inspect", pickle, "--json"], ["pool", "inspect", join(folder, "absent.safetensors")],
      ["pool", "inspect"], ["pool", "inspect", pickle, "--yaml"], ["pool", "explode"]]) {
      const { code, out, err } = await run(...argv);
      expect(code, argv.join(" ")).toBe(2);
      expect(out).toEqual([]);
      expect(err[0]!.length).toBeGreaterThan(10);
    }
    expect((await run("pool", "inspect", pickle)).err).toEqual([`${pickle}: the file is a pickle or torch zip archive; ` +
      "only .safetensors LoRAs are accepted (pickles can run code)"]);
    expect((await run("pool", "inspect", join(folder, "absent.safetensors"))).err[0]).toMatch(/no such file$/);
  });
});
