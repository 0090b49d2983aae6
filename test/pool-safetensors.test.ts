// The header validator is the pool's front door: each kind of malformed file gets its own code and message, and
// nothing past the header is read. Only regular files get in: a FIFO or a device is refused at once, not read.
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, open, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  DEFAULT_LIMITS, InvalidLoraFileError, readSafetensorsHeader, StreamingHeaderCheck, validateSafetensorsBytes,
} from "../src/pool/safetensors.js";
import { LoraStore, sha256File } from "../src/pool/store.js";
import { rawSafetensors, safetensorsFile } from "../src/testing/safetensors.js";

function rejection(bytes: Buffer, limits = DEFAULT_LIMITS): InvalidLoraFileError {
  try {
    validateSafetensorsBytes(bytes, limits);
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidLoraFileError);
    return error as InvalidLoraFileError;
  }
  throw new Error("the file was accepted");
}

const entry = (dtype: string, shape: number[], begin: number, end: number) => ({ dtype, shape, data_offsets: [begin, end] });

describe("safetensors header validation", () => {
  it("accepts a well-formed file and reports its tensors and metadata", () => {
    const file = safetensorsFile(
      [{ name: "b", shape: [2, 3] }, { name: "a", dtype: "F32", shape: [] }],
      { format: "pt" },
    );
    const header = validateSafetensorsBytes(file);
    expect(header.metadata).toEqual({ format: "pt" });
    expect(header.tensors.map((t) => [t.name, t.dtype, t.shape, t.begin, t.end])).toEqual([
      ["b", "F16", [2, 3], 0, 12],
      ["a", "F32", [], 12, 16],
    ]);
    expect(header.dataStart + 16).toBe(file.length);
  });

  it("accepts a header padded with trailing spaces, as the safetensors writer aligns it", () => {
    const padded = rawSafetensors(`${JSON.stringify({ w: entry("U8", [4], 0, 4) })}    `, 4);
    expect(validateSafetensorsBytes(padded).tensors).toHaveLength(1);
  });

  const cases: Array<[string, Buffer, string, RegExp, Partial<typeof DEFAULT_LIMITS>?]> = [
    ["an empty file", Buffer.alloc(0), "empty", /empty/],
    ["a 5-byte file", Buffer.from([1, 0, 0, 0, 0]), "too-short", /5 bytes, too short/],
    ["a torch zip archive", Buffer.concat([Buffer.from("PK\x03\x04"), Buffer.alloc(60)]), "pickle", /pickle.*can run code/],
    ["a bare pickle", Buffer.from([0x80, 0x02, 0x7d, 0x71, 0x00, 0x2e, 0, 0, 0, 0]), "pickle", /only \.safetensors/],
    ["a file over the size cap", safetensorsFile([{ name: "w", shape: [64] }]), "too-large", /over the 100 bytes limit/,
      { maxFileBytes: 100 }],
    ["a header longer than the file", Buffer.concat([Buffer.from([255, 0, 0, 0, 0, 0, 0, 0]), Buffer.from("{}")]),
      "header-length", /header length says 255 bytes, 2 follow/],
    ["a header over the header cap", rawSafetensors({ w: entry("U8", [1], 0, 1) }, 1), "header-too-large", /over the 10 bytes limit/,
      { maxHeaderBytes: 10 }],
    ["a header that is not JSON", rawSafetensors("{not json", 0), "header-not-json", /not valid UTF-8 JSON/],
    ["a header that is not UTF-8", rawSafetensors(Buffer.from([0x7b, 0xff, 0x7d]).toString("latin1"), 0), "header-not-json", /UTF-8/],
    ["a header that is a JSON array", rawSafetensors([1, 2], 0), "header-not-object", /not a JSON object/],
    ["non-string metadata", rawSafetensors({ __metadata__: { rank: 4 } }, 0), "metadata-invalid", /strings to strings/],
    ["too many tensors", safetensorsFile([{ name: "a", shape: [1] }, { name: "b", shape: [1] }]), "too-many-tensors",
      /2 tensors, over the limit of 1/, { maxTensors: 1 }],
    ["an entry without data_offsets", rawSafetensors({ w: { dtype: "F16", shape: [1] } }, 2), "entry-invalid", /"w" needs/],
    ["reversed data_offsets", rawSafetensors({ w: entry("U8", [0], 4, 0) }, 4), "entry-invalid", /begin ≤ end/],
    ["an unknown dtype", rawSafetensors({ w: entry("F12", [1], 0, 2) }, 2), "dtype-unknown", /unknown dtype "F12"/],
    ["a negative dimension", rawSafetensors({ w: entry("F16", [-1, 2], 0, 4) }, 4), "shape-invalid", /non-negative integers/],
    ["a shape that does not fill its range", rawSafetensors({ w: entry("F32", [2, 2], 0, 12) }, 12), "size-mismatch",
      /\[2,2\] × F32 is 16 bytes but its range holds 12/],
    ["a range past the end of the file", rawSafetensors({ w: entry("U8", [8], 0, 8) }, 4), "out-of-bounds",
      /truncated or corrupt.*0-8 of a 4-byte data section/],
    ["overlapping tensors", rawSafetensors({ a: entry("U8", [4], 0, 4), b: entry("U8", [4], 2, 6) }, 6), "overlap",
      /"b" overlaps/],
    ["a hole between tensors", rawSafetensors({ a: entry("U8", [2], 0, 2), b: entry("U8", [2], 4, 6) }, 6), "gap",
      /bytes 2-4 .* belong to no tensor/],
    ["bytes after the last tensor", rawSafetensors({ a: entry("U8", [2], 0, 2) }, 5), "gap", /3 bytes after the last tensor/],
  ];

  it.each(cases)("refuses %s with its own code and message", (_label, bytes, code, message, limits) => {
    const error = rejection(bytes, { ...DEFAULT_LIMITS, ...limits });
    expect(error.code).toBe(code);
    expect(error.message).toMatch(message);
    expect(error.message).not.toContain("\n");
  });

  it.each(cases)("refuses %s the same way when the file streams past in small chunks (one-pass ingest)", (_label, bytes, code, _message, limits) => {
    for (const chunk of [1, 7, 4096]) {
      const attempt = () => {
        const check = new StreamingHeaderCheck(bytes.length, { ...DEFAULT_LIMITS, ...limits });
        for (let start = 0; start < bytes.length; start += chunk) check.push(bytes.subarray(start, start + chunk));
        return check.finish();
      };
      expect(attempt, `chunks of ${chunk}`).toThrow(expect.objectContaining({ code }));
    }
  });

  it("a streamed header is the header read from disk, known before the data section is read", () => {
    const file = safetensorsFile([{ name: "w", dtype: "F32", shape: [256] }, { name: "b", shape: [4] }]);
    const check = new StreamingHeaderCheck(file.length);
    const dataStart = validateSafetensorsBytes(file).dataStart;
    for (let start = 0; start < dataStart; start += 5) check.push(file.subarray(start, Math.min(start + 5, dataStart)));
    expect(check.header).toEqual(validateSafetensorsBytes(file));
  });

  it("a real header length that begins with 0x80 is not mistaken for a pickle", () => {
    const name = "x".repeat(1408 - JSON.stringify({ "": entry("U8", [1], 0, 1) }).length);
    const file = rawSafetensors({ [name]: entry("U8", [1], 0, 1) }, 1);
    expect(file[0]).toBe(0x80);
    expect(validateSafetensorsBytes(file).tensors[0]!.name).toBe(name);
  });

  it("reads a file on disk through its header only, and refuses the same classes there", async () => {
    const folder = await mkdtemp(join(tmpdir(), "autolora-st-"));
    const good = join(folder, "good.safetensors");
    await writeFile(good, safetensorsFile([{ name: "w", dtype: "F32", shape: [1000, 1000] }]));
    const header = await readSafetensorsHeader(good);
    expect(header.tensors[0]).toMatchObject({ name: "w", begin: 0, end: 4_000_000 });
    const truncated = join(folder, "truncated.safetensors");
    await writeFile(truncated, safetensorsFile([{ name: "w", shape: [64] }]).subarray(0, 100));
    await expect(readSafetensorsHeader(truncated)).rejects.toMatchObject({ code: "out-of-bounds" });
  });

  it("refuses a FIFO, a directory and a link to a device at once, naming the path, and still reads a link to a file",
    async () => {
      const folder = await mkdtemp(join(tmpdir(), "autolora-st-"));
      const fifo = join(folder, "pipe.safetensors");
      execFileSync("mkfifo", [fifo]);
      const directory = join(folder, "folder.safetensors");
      await mkdir(directory);
      const device = join(folder, "zero.safetensors");
      await symlink("/dev/zero", device);
      const good = join(folder, "good.safetensors");
      await writeFile(good, safetensorsFile([{ name: "w", shape: [4] }]));
      const linked = join(folder, "linked.safetensors");
      await symlink(good, linked);
      const store = new LoraStore(join(folder, "pool"));
      const cases: Array<[string, RegExp, () => Promise<unknown>]> = [
        [fifo, /pipe\.safetensors is a named pipe \(FIFO\), not a regular file/, () => readSafetensorsHeader(fifo)],
        [fifo, /named pipe/, () => sha256File(fifo)],
        [fifo, /named pipe/, () => store.stage(fifo)],
        [device, /character device/, () => store.stage(device)],
        [directory, /folder\.safetensors is a directory, not a regular file/, () => readSafetensorsHeader(directory)],
        [device, /zero\.safetensors links to a character device, not a regular file/, () => readSafetensorsHeader(device)],
        [device, /character device/, () => sha256File(device)],
      ];
      for (const [path, message, attempt] of cases) {
        const answer = await answersWithin(attempt(), 5_000, fifo);
        expect(answer, path).toBeInstanceOf(InvalidLoraFileError);
        expect(answer, path).toMatchObject({ code: "not-a-regular-file", path, message: expect.stringMatching(message) });
      }
      expect((await readSafetensorsHeader(linked)).tensors[0]!.name).toBe("w");
    }, 60_000);
});

/** What `work` settles with, or "hung" after `ms`; a hung open of the FIFO is then released by opening its other end. */
async function answersWithin(work: Promise<unknown>, ms: number, fifo: string): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<"hung">((resolve) => { timer = setTimeout(() => resolve("hung"), ms); });
  const answer = await Promise.race([work.then(() => "accepted", (error: unknown) => error), hung]);
  clearTimeout(timer);
  if (answer === "hung") await (await open(fifo, "w")).close();
  return answer;
}
