// A generation's metadata inside its PNG: whatever the prompt holds (NUL, control characters, emoji, text that
// looks like an escape) comes back exactly, and the `parameters` entry still parses as JSON.
import sharp from "sharp";
import { beforeAll, describe, expect, it } from "vitest";
import { readPngText, withPngText } from "../src/pipeline/png-text.js";

let png: Buffer;
beforeAll(async () => {
  png = await sharp({ create: { width: 2, height: 2, channels: 3, background: "#336699" } }).png().toBuffer();
});

const TRICKY: Array<[string, string]> = [
  ["plain ASCII", "a red hexagon, diagonal stripes"],
  ["a NUL", "before\u0000after"],
  ["control characters", "tab\there\r\nbell\u0007 escape\u001b[31m delete\u007f next-line\u0085"],
  ["Latin-1 letters", "café crème, naïve Ærø ÿ"],
  ["emoji and other scripts", "🦊 fox in the snow ❄️ 雪の狐 Лиса"],
  ["a literal backslash-u sequence", "\\u0000 is not a NUL, \\u00e9 is not é, \\\\u0041"],
  ["JSON's own escapes in the text", "{\"quoted\": \"\\\"x\\\"\", \"nul\": \"\\u0000\"}"],
  ["backslashes and quotes", "C:\\models\\lora.safetensors \"quoted\" 'single'"],
  ["a lone surrogate", "broken \ud83d half"],
  ["an empty prompt", ""],
];

describe("PNG text chunks", () => {
  it.each(TRICKY)("round-trips a prompt with %s through the parameters JSON", (_label, prompt) => {
    const parameters = JSON.stringify({ prompt, seeds: [7] });
    const written = withPngText(png, { Software: "AutoLoRA bot", parameters });
    const read = readPngText(written);
    expect(read.parameters).toBe(parameters);
    expect(JSON.parse(read.parameters!)).toEqual({ prompt, seeds: [7] });
    expect(read.Software).toBe("AutoLoRA bot");
  });

  // Outside JSON, the two that no PNG text chunk can hold are refused (below); everything else is kept as it is.
  it.each(TRICKY.filter(([label]) => label !== "a NUL" && label !== "a lone surrogate"))(
    "stores a value with %s as it is, with no escaping of its own", (_label, value) => {
      expect(readPngText(withPngText(png, { Comment: value })).Comment).toBe(value);
    });

  it("keeps the image decodable and Latin-1 text in a plain tEXt chunk other tools read", async () => {
    const written = withPngText(png, { parameters: "café", Title: "🦊" });
    expect(await sharp(written).metadata()).toMatchObject({ format: "png", width: 2, height: 2 });
    const types: string[] = [];
    for (let offset = 8; offset < written.length; offset += 12 + written.readUInt32BE(offset)) {
      types.push(written.toString("latin1", offset + 4, offset + 8));
    }
    expect(types).toEqual(["IHDR", "tEXt", "iTXt", ...types.slice(3)]);
    expect(written.includes(Buffer.from("parameters\u0000caf\u00e9", "latin1"))).toBe(true);
  });

  it("refuses what no PNG text chunk can hold, saying why", () => {
    expect(() => withPngText(png, { Comment: "a\u0000b" })).toThrow(/NUL/);
    expect(() => withPngText(png, { Comment: "broken \ud83d half" })).toThrow(/surrogate/);
    expect(() => withPngText(png, { "bad\u0000key": "x" })).toThrow(/key/);
  });
});
