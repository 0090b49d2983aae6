// PNG text chunks (tEXt): how a generation's prompt, seed, LoRAs and versions travel inside the image file, the
// way community tools store generation parameters. sharp writes no arbitrary text chunks, so we add them here.
import { crc32 } from "node:zlib";

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function chunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, "latin1");
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])) >>> 0, 0);
  return Buffer.concat([head, data, crc]);
}

/** The PNG with one tEXt chunk per entry, placed right after IHDR. Keys are Latin-1 (1-79 chars); values are
 *  written as UTF-8 JSON-safe text (tEXt is Latin-1 by spec, so non-Latin-1 characters are \u-escaped). */
export function withPngText(png: Buffer, entries: Record<string, string>): Buffer {
  if (!png.subarray(0, 8).equals(SIGNATURE)) throw new Error("not a PNG");
  const ihdrEnd = 8 + 12 + png.readUInt32BE(8);
  const chunks = Object.entries(entries).map(([key, value]) => {
    if (!/^[\x20-\x7e]{1,79}$/.test(key)) throw new Error(`PNG text key must be 1-79 printable ASCII characters: ${JSON.stringify(key)}`);
    const latin1 = value.replace(/[^\x20-\x7e\n]/g, (char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, "0")}`);
    return chunk("tEXt", Buffer.concat([Buffer.from(key, "latin1"), Buffer.from([0]), Buffer.from(latin1, "latin1")]));
  });
  return Buffer.concat([png.subarray(0, ihdrEnd), ...chunks, png.subarray(ihdrEnd)]);
}

/** The tEXt entries of a PNG (escapes as written by withPngText are undone). */
export function readPngText(png: Buffer): Record<string, string> {
  const entries: Record<string, string> = {};
  for (let offset = 8; offset + 8 <= png.length;) {
    const length = png.readUInt32BE(offset);
    const type = png.toString("latin1", offset + 4, offset + 8);
    if (type === "tEXt") {
      const data = png.subarray(offset + 8, offset + 8 + length);
      const split = data.indexOf(0);
      entries[data.toString("latin1", 0, split)] = data.toString("latin1", split + 1)
        .replace(/\\u([0-9a-f]{4})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));
    }
    offset += 12 + length;
  }
  return entries;
}
