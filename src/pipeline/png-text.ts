// PNG text chunks: how a generation's prompt, seed, LoRAs and versions travel inside the image file, the way
// community tools store generation parameters. sharp writes no arbitrary text chunks, so we add them here.
import { crc32, inflateSync } from "node:zlib";

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
// What a tEXt chunk holds by the PNG spec: printable Latin-1 and the line feed.
const PRINTABLE_LATIN1 = /^[\n\x20-\x7e\xa0-\xff]*$/;

function chunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, "latin1");
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])) >>> 0, 0);
  return Buffer.concat([head, data, crc]);
}

/**
 * The PNG with one text chunk per entry, placed right after IHDR. Keys are 1-79 printable ASCII characters.
 * Values are stored as they are, never escaped: printable Latin-1 in a tEXt chunk (what every tool reads),
 * anything else in an iTXt chunk as UTF-8. Neither chunk may hold a NUL, and UTF-8 cannot hold a lone
 * surrogate, so those are refused; JSON text (JSON.stringify escapes both) never contains them.
 */
export function withPngText(png: Buffer, entries: Record<string, string>): Buffer {
  if (!png.subarray(0, 8).equals(SIGNATURE)) throw new Error("not a PNG");
  const ihdrEnd = 8 + 12 + png.readUInt32BE(8);
  const chunks = Object.entries(entries).map(([key, value]) => {
    if (!/^[\x20-\x7e]{1,79}$/.test(key)) throw new Error(`PNG text key must be 1-79 printable ASCII characters: ${JSON.stringify(key)}`);
    if (value.includes("\u0000")) throw new Error(`PNG text ${key} holds a NUL character, which no PNG text chunk may hold`);
    const keyword = Buffer.from(`${key}\u0000`, "latin1");
    if (PRINTABLE_LATIN1.test(value)) return chunk("tEXt", Buffer.concat([keyword, Buffer.from(value, "latin1")]));
    const utf8 = Buffer.from(value, "utf8");
    if (utf8.toString("utf8") !== value) throw new Error(`PNG text ${key} holds a lone surrogate, which UTF-8 cannot encode`);
    // Uncompressed, no language tag, no translated keyword.
    return chunk("iTXt", Buffer.concat([keyword, Buffer.from([0, 0, 0, 0]), utf8]));
  });
  return Buffer.concat([png.subarray(0, ihdrEnd), ...chunks, png.subarray(ihdrEnd)]);
}

/** The tEXt and iTXt entries of a PNG, exactly as withPngText was given them. */
export function readPngText(png: Buffer): Record<string, string> {
  const entries: Record<string, string> = {};
  for (let offset = 8; offset + 8 <= png.length;) {
    const length = png.readUInt32BE(offset);
    const type = png.toString("latin1", offset + 4, offset + 8);
    const data = png.subarray(offset + 8, offset + 8 + length);
    const keyEnd = data.indexOf(0);
    if (type === "tEXt" && keyEnd > 0) entries[data.toString("latin1", 0, keyEnd)] = data.toString("latin1", keyEnd + 1);
    if (type === "iTXt" && keyEnd > 0) {
      const compressed = data[keyEnd + 1] === 1;
      const languageEnd = data.indexOf(0, keyEnd + 3);
      const translatedEnd = data.indexOf(0, languageEnd + 1);
      const text = data.subarray(translatedEnd + 1);
      entries[data.toString("latin1", 0, keyEnd)] = (compressed ? inflateSync(text) : text).toString("utf8");
    }
    offset += 12 + length;
  }
  return entries;
}
