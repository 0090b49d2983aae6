// Safetensors header validation: every LoRA file passes here before a worker or the store sees it. Only the
// 8-byte length and the JSON header are read, so a multi-GB file costs one small read. Only regular files are
// opened at all (openRegularFile).
import { constants, type Stats } from "node:fs";
import { lstat, open, stat, type FileHandle } from "node:fs/promises";

/** Bytes per element of every dtype the safetensors format defines. */
export const DTYPE_BYTES: Readonly<Record<string, number>> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, F8_E5M2: 1,
  I64: 8, I32: 4, I16: 2, I8: 1, U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1,
};

export type InvalidLoraFileCode =
  | "empty" | "too-short" | "pickle" | "too-large" | "header-length" | "header-too-large" | "header-not-json"
  | "header-not-object" | "metadata-invalid" | "too-many-tensors" | "entry-invalid" | "dtype-unknown"
  | "shape-invalid" | "size-mismatch" | "out-of-bounds" | "overlap" | "gap" | "not-a-lora" | "not-a-regular-file";

/** A file that is not a LoRA we will load; `message` is one line a user can act on, `code` is stable. `path` is
 *  set when the message names the file itself. */
export class InvalidLoraFileError extends Error {
  override readonly name = "InvalidLoraFileError";
  constructor(readonly code: InvalidLoraFileCode, message: string, readonly path?: string) {
    super(message);
  }
}

export interface SafetensorsLimits {
  /** Largest file accepted, in bytes. Default 2 GiB: the largest community FLUX LoRAs are ~1.3 GB. */
  maxFileBytes: number;
  /** Largest JSON header, in bytes. Default 100 MB, the limit the safetensors library itself enforces. */
  maxHeaderBytes: number;
  /** Most tensors in one file. Default 20 000: a rank-anything LoRA of every FLUX linear has ~1 500. */
  maxTensors: number;
}

export const DEFAULT_LIMITS: SafetensorsLimits = {
  maxFileBytes: 2 * 1024 ** 3,
  maxHeaderBytes: 100_000_000,
  maxTensors: 20_000,
};

export interface TensorInfo {
  name: string;
  dtype: string;
  shape: number[];
  /** Byte range inside the data section (after the header), end exclusive. */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  tensors: TensorInfo[];
  metadata: Record<string, string>;
  /** Offset of the data section from the start of the file. */
  dataStart: number;
  fileBytes: number;
}

// torch.save writes a zip archive; a bare pickle starts with the PROTO opcode 0x80.
const ZIP_MAGIC = Buffer.from([0x50, 0x4b, 0x03, 0x04]);
const PICKLE_PROTO = 0x80;

/**
 * Open `path` for reading only if it is a regular file (a link to one is fine): a FIFO would block the open or
 * the read for good, a device such as /dev/zero never ends, a directory is no file. Checked on the path before
 * opening, so no device is even opened, and on the opened handle, so a path swapped in between is caught too;
 * the open itself does not wait for a FIFO's writer (O_NONBLOCK, which regular files ignore). Throws
 * InvalidLoraFileError("not-a-regular-file") naming the path.
 */
export async function openRegularFile(path: string): Promise<{ handle: FileHandle; size: number }> {
  const [link, target] = await Promise.all([lstat(path), stat(path)]);
  if (!target.isFile()) throw notARegularFile(path, target, link.isSymbolicLink());
  const handle = await open(path, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
  try {
    const opened = await handle.stat();
    if (!opened.isFile()) throw notARegularFile(path, opened, false);
    return { handle, size: opened.size };
  } catch (error) {
    await handle.close();
    throw error;
  }
}

function notARegularFile(path: string, stats: Stats, linked: boolean): InvalidLoraFileError {
  const kind = stats.isDirectory() ? "a directory" : stats.isFIFO() ? "a named pipe (FIFO)"
    : stats.isCharacterDevice() ? "a character device" : stats.isBlockDevice() ? "a block device"
    : stats.isSocket() ? "a socket" : "something";
  return new InvalidLoraFileError(
    "not-a-regular-file",
    `${path} ${linked ? "links to" : "is"} ${kind}, not a regular file; give the path of a .safetensors file`,
    path,
  );
}

/** Read and validate the header of the safetensors file at `path`. Throws InvalidLoraFileError. */
export async function readSafetensorsHeader(
  path: string,
  limits: SafetensorsLimits = DEFAULT_LIMITS,
): Promise<SafetensorsHeader> {
  const { handle, size } = await openRegularFile(path);
  try {
    const prefixBytes = Math.min(size, 8);
    const prefix = Buffer.alloc(prefixBytes);
    await handle.read(prefix, 0, prefixBytes, 0);
    const headerLength = checkPrefix(prefix, size, limits);
    const header = Buffer.alloc(headerLength);
    await handle.read(header, 0, headerLength, 8);
    return parseHeader(header, size, limits);
  } finally {
    await handle.close();
  }
}

/** Validate a whole safetensors file held in memory (uploads, tests). Throws InvalidLoraFileError. */
export function validateSafetensorsBytes(
  bytes: Uint8Array,
  limits: SafetensorsLimits = DEFAULT_LIMITS,
): SafetensorsHeader {
  const data = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = checkPrefix(data.subarray(0, 8), data.length, limits);
  return parseHeader(data.subarray(8, 8 + headerLength), data.length, limits);
}

/**
 * A safetensors header checked from a file's first bytes as they stream past (one-pass ingest: the same read
 * hashes and copies the file). `push` throws InvalidLoraFileError as soon as the bytes seen refuse the file.
 */
export class StreamingHeaderCheck {
  private readonly seen: Buffer[] = [];
  private seenBytes = 0;
  private headerLength: number | undefined;
  header: SafetensorsHeader | undefined;

  constructor(private readonly fileBytes: number, private readonly limits: SafetensorsLimits = DEFAULT_LIMITS) {
    // A file too large, or empty, is refused before its first byte is read.
    if (fileBytes === 0 || fileBytes > limits.maxFileBytes) checkPrefix(Buffer.alloc(0), fileBytes, limits);
  }

  push(chunk: Buffer): void {
    if (this.header) return;
    this.seen.push(chunk);
    this.seenBytes += chunk.length;
    if (this.headerLength === undefined && this.seenBytes >= 8) {
      this.headerLength = checkPrefix(Buffer.concat(this.seen).subarray(0, 8), this.fileBytes, this.limits);
    }
    if (this.headerLength !== undefined && this.seenBytes >= 8 + this.headerLength) {
      this.header = parseHeader(Buffer.concat(this.seen).subarray(8, 8 + this.headerLength), this.fileBytes, this.limits);
      this.seen.length = 0;
    }
  }

  /** The header, once the whole file went past; throws if the file ended before its header did. */
  finish(): SafetensorsHeader {
    if (this.header) return this.header;
    // Too short for the length prefix, or a pickle: checkPrefix says which. Otherwise the file shrank while read.
    checkPrefix(Buffer.concat(this.seen).subarray(0, 8), this.fileBytes, this.limits);
    throw new InvalidLoraFileError("header-length", "the file ended inside its safetensors header (it changed while it was read)");
  }
}

/** The declared header length, once the file's size and first bytes say it can be a safetensors file. */
function checkPrefix(prefix: Buffer, fileBytes: number, limits: SafetensorsLimits): number {
  if (fileBytes === 0) throw new InvalidLoraFileError("empty", "the file is empty");
  if (fileBytes > limits.maxFileBytes) {
    throw new InvalidLoraFileError(
      "too-large",
      `the file is ${formatBytes(fileBytes)}, over the ${formatBytes(limits.maxFileBytes)} limit for a LoRA`,
    );
  }
  // A real header length can itself start with 0x80 (e.g. 1408), so the pickle verdict waits for the length check.
  const declared = prefix.length === 8 ? prefix.readBigUInt64LE(0) : -1n;
  const headerLength = Number(declared);
  const plausible = headerLength > 0 && headerLength <= fileBytes - 8;
  if (!plausible && (prefix.subarray(0, 4).equals(ZIP_MAGIC) || prefix[0] === PICKLE_PROTO)) {
    throw new InvalidLoraFileError(
      "pickle",
      "the file is a pickle or torch zip archive; only .safetensors LoRAs are accepted (pickles can run code)",
    );
  }
  if (prefix.length < 8) {
    throw new InvalidLoraFileError("too-short", `the file is ${fileBytes} bytes, too short to be a safetensors file`);
  }
  if (!plausible) {
    throw new InvalidLoraFileError(
      "header-length",
      `not a safetensors file, or a truncated one: its header length says ${declared} bytes, ` +
        `${fileBytes - 8} follow in the file`,
    );
  }
  if (headerLength > limits.maxHeaderBytes) {
    throw new InvalidLoraFileError(
      "header-too-large",
      `the safetensors header is ${formatBytes(headerLength)}, over the ${formatBytes(limits.maxHeaderBytes)} limit`,
    );
  }
  return headerLength;
}

function parseHeader(header: Buffer, fileBytes: number, limits: SafetensorsLimits): SafetensorsHeader {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(header));
  } catch {
    throw new InvalidLoraFileError("header-not-json", "the safetensors header is not valid UTF-8 JSON");
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new InvalidLoraFileError("header-not-object", "the safetensors header is not a JSON object");
  }
  const entries = Object.entries(parsed as Record<string, unknown>);
  const metadata = checkMetadata((parsed as Record<string, unknown>)["__metadata__"]);
  const tensors = entries.filter(([name]) => name !== "__metadata__").map(([name, entry]) => checkEntry(name, entry));
  if (tensors.length > limits.maxTensors) {
    throw new InvalidLoraFileError(
      "too-many-tensors",
      `the file holds ${tensors.length} tensors, over the limit of ${limits.maxTensors}`,
    );
  }
  const dataStart = 8 + header.length;
  checkLayout(tensors, fileBytes - dataStart);
  return { tensors, metadata, dataStart, fileBytes };
}

function checkMetadata(value: unknown): Record<string, string> {
  if (value === undefined) return {};
  const valid = typeof value === "object" && value !== null && !Array.isArray(value) &&
    Object.values(value).every((item) => typeof item === "string");
  if (!valid) {
    throw new InvalidLoraFileError("metadata-invalid", "the header's __metadata__ must map strings to strings");
  }
  return value as Record<string, string>;
}

function checkEntry(name: string, entry: unknown): TensorInfo {
  const record = typeof entry === "object" && entry !== null && !Array.isArray(entry)
    ? entry as Record<string, unknown> : undefined;
  const { dtype, shape, data_offsets: offsets } = record ?? {};
  if (typeof dtype !== "string" || !Array.isArray(shape) || !Array.isArray(offsets)) {
    throw new InvalidLoraFileError(
      "entry-invalid",
      `tensor ${JSON.stringify(name)} needs "dtype", "shape" and "data_offsets" in the header`,
    );
  }
  const elementBytes = DTYPE_BYTES[dtype];
  if (elementBytes === undefined) {
    throw new InvalidLoraFileError("dtype-unknown", `tensor ${JSON.stringify(name)} has unknown dtype ${JSON.stringify(dtype)}`);
  }
  if (!shape.every(isCount)) {
    throw new InvalidLoraFileError(
      "shape-invalid",
      `tensor ${JSON.stringify(name)} has shape ${JSON.stringify(shape)}; dimensions must be non-negative integers`,
    );
  }
  const [begin, end] = offsets;
  if (offsets.length !== 2 || !isCount(begin) || !isCount(end) || begin > end) {
    throw new InvalidLoraFileError(
      "entry-invalid",
      `tensor ${JSON.stringify(name)} has data_offsets ${JSON.stringify(offsets)}; expected [begin, end] with begin ≤ end`,
    );
  }
  const expected = (shape as number[]).reduce((product, dimension) => product * dimension, elementBytes);
  if (expected !== end - begin) {
    throw new InvalidLoraFileError(
      "size-mismatch",
      `tensor ${JSON.stringify(name)}: shape ${JSON.stringify(shape)} × ${dtype} is ${expected} bytes but its range holds ${end - begin}`,
    );
  }
  return { name, dtype, shape: shape as number[], begin, end };
}

/** The ranges must tile the data section exactly: in bounds, no overlap, no gap, nothing after the last one. */
function checkLayout(tensors: TensorInfo[], dataBytes: number): void {
  const sorted = [...tensors].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const tensor of sorted) {
    if (tensor.end > dataBytes) {
      throw new InvalidLoraFileError(
        "out-of-bounds",
        `the file is truncated or corrupt: tensor ${JSON.stringify(tensor.name)} lies at bytes ${tensor.begin}-${tensor.end} of a ${dataBytes}-byte data section`,
      );
    }
    if (tensor.begin < cursor) {
      throw new InvalidLoraFileError(
        "overlap",
        `tensor ${JSON.stringify(tensor.name)} overlaps the tensor before it (starts at byte ${tensor.begin}, previous ends at ${cursor})`,
      );
    }
    if (tensor.begin > cursor) {
      throw new InvalidLoraFileError(
        "gap",
        `bytes ${cursor}-${tensor.begin} of the data section belong to no tensor (before ${JSON.stringify(tensor.name)})`,
      );
    }
    cursor = tensor.end;
  }
  if (cursor !== dataBytes) {
    throw new InvalidLoraFileError(
      "gap",
      `the data section has ${dataBytes - cursor} bytes after the last tensor; the file is not a clean safetensors file`,
    );
  }
}

function isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function formatBytes(bytes: number): string {
  if (bytes >= 1024 ** 3) return `${(bytes / 1024 ** 3).toFixed(1)} GiB`;
  if (bytes >= 1024 ** 2) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
  return `${bytes} bytes`;
}
