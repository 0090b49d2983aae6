// The host embeds prompts with the exported text encoder (tokenizer in TypeScript, ONNX Runtime); it must agree
// with the worker's PyTorch encoder, which the LoRA encoder was trained against (cosine ≥ 0.999 on 100 prompts).
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { TextEncoder } from "../src/pipeline/text-encoder.js";

const root = join(import.meta.dirname, "..");
const exportDir = join(root, "build", "text-encoder");
const python = join(root, ".venv", "bin", "python");

const SHAPES = ["circle", "square", "triangle", "hexagon", "pentagon", "star", "heart", "cross", "ring", "diamond",
  "crescent", "arrow"];
const STYLES = ["flat", "striped", "dotted", "checkered", "outlined", "gradient", "grainy", "pixelated", "neon", "wavy"];
const COLOURS = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"];

function prompts(): string[] {
  const list: string[] = [];
  for (let i = 0; i < 60; i++) {
    list.push(`a ${COLOURS[i % 8]} ${SHAPES[i % 12]} in ${STYLES[(i * 7) % 10]} style`);
  }
  for (let i = 0; i < 15; i++) list.push(`can you draw me a ${STYLES[i % 10]} ${SHAPES[(i * 5) % 12]}? make it ${COLOURS[(i * 3) % 8]}`);
  // Longer than the 32-token truncation, so both sides must cut at the same place.
  for (let i = 0; i < 10; i++) list.push(Array(6).fill(`a ${COLOURS[i % 8]} ${SHAPES[i]} next to a ${STYLES[i]} one`).join(", "));
  list.push("", "x", "héxagone rouge à rayures", "星形", "a 🟥 square", "ring (thin) — outlined", "cross/plus sign",
    "crescent moon; grainy texture", "arrow → right", "   spaced   out   ", "UPPER CASE HEXAGON", "don't stop",
    "six-sided", "a 3d render of a star", "naïve café doodle");
  return list;
}

describe("host text encoder", () => {
  it("matches the worker's PyTorch text encoder on 100 prompts", async () => {
    expect(existsSync(join(exportDir, "text-encoder.json")), "run `make text-encoder` (make test does)").toBe(true);
    const texts = prompts();
    expect(new Set(texts).size).toBe(100);
    const encoder = await TextEncoder.load(exportDir);
    const ours = await encoder.embed(texts);
    const script = [
      "import json, sys, torch",
      "from autolora_worker.text import MiniLMTextEncoder",
      "texts = json.load(sys.stdin)",
      "encoder = MiniLMTextEncoder(32, torch.device('cpu'), torch.float32)",
      "print(json.dumps(encoder(texts).pooled.float().tolist()))",
    ].join("\n");
    const reference = JSON.parse(execFileSync(python, ["-c", script], {
      input: JSON.stringify(texts), env: { ...process.env, HF_HUB_OFFLINE: "1" }, maxBuffer: 64 << 20,
    }).toString()) as number[][];
    const cosines = ours.map((vector, row) => {
      const other = reference[row]!;
      let dot = 0, a = 0, b = 0;
      vector.forEach((value, i) => { dot += value * other[i]!; a += value * value; b += other[i]! * other[i]!; });
      return dot / Math.sqrt(a * b);
    });
    const worst = cosines.indexOf(Math.min(...cosines));
    expect(cosines[worst], `worst prompt: ${JSON.stringify(texts[worst])}`).toBeGreaterThanOrEqual(0.999);
    expect(encoder.dimension).toBe(384);
    for (const vector of ours) expect(Math.hypot(...vector)).toBeCloseTo(1, 4);
    await encoder.close();
  }, 120_000);

  it("says how to make the export when it is missing", async () => {
    await expect(TextEncoder.load(join(root, "no-such-folder"))).rejects.toThrow(/text-encoder\.json missing\); run `make text-encoder`/);
  });

  it("embeds off the event loop: timers keep firing while a large batch runs", async () => {
    const encoder = await TextEncoder.load(exportDir);
    try {
      const texts = prompts().slice(0, 64);
      const ticks: number[] = [];
      const timer = setInterval(() => ticks.push(performance.now()), 2);
      const started = performance.now();
      await encoder.embed(texts);
      const finished = performance.now();
      const took = finished - started;
      clearInterval(timer);
      const gaps = [started, ...ticks, finished].map((at, i, all) => (i === 0 ? 0 : at - all[i - 1]!));
      // Run on the main thread, the batch (hundreds of ms) would be one gap as long as itself.
      expect(took).toBeGreaterThan(50);
      expect(Math.max(...gaps), `longest gap between 2 ms ticks during a ${Math.round(took)} ms embed`).toBeLessThan(took / 2);
    } finally {
      await encoder.close();
    }
  }, 120_000);

  it("answers concurrent requests each with its own vectors, then refuses after close", async () => {
    const encoder = await TextEncoder.load(exportDir);
    const groups = [["a red hexagon"], ["stripes", "a neon star on a wavy background", "x"], ["heart"]];
    const alone: Float32Array[][] = [];
    for (const texts of groups) alone.push(await encoder.embed(texts));
    const together = await Promise.all(groups.map((texts) => encoder.embed(texts)));
    together.forEach((vectors, group) => vectors.forEach((vector, row) => {
      const reference = alone[group]![row]!;
      const cosine = vector.reduce((sum, value, i) => sum + value * reference[i]!, 0);
      expect(cosine, `${groups[group]![row]}`).toBeGreaterThan(0.9999); // batched with others: padding only
    }));
    await encoder.close();
    await expect(encoder.embed(["a star"])).rejects.toThrow(/text encoder is closed/);
  }, 60_000);
});
