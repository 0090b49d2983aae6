// The images of one /imagine: the worker's PNGs become a 2x2 (or n-up) grid and the single images, each PNG
// carrying the generation's metadata, plus a compact WebP of the grid for chat messages.
import sharp from "sharp";
import { withPngText } from "./png-text.js";
import type { ScoreParts } from "./retrieval.js";

export interface GenerationMetadata {
  prompt: string;
  seeds: number[];
  /** `covers`: the prompt word a covering pick was chosen for (absent for top-k picks and chosen LoRAs). */
  loras: Array<{ id: string; name: string; similarity: number; scale: number; covers?: string; parts?: ScoreParts }>;
  fusion: string;
  /** Why `fusion` is not the one asked for (e.g. no trained gates on the worker); absent when it is. */
  fusion_note?: string;
  model_version: string;
  gate_version: string | null;
}

export interface ComposedImages {
  grid: Buffer;
  gridWebp: Buffer;
  singles: Buffer[];
  width: number;
  height: number;
}

/** Tiles at least this wide: the proving ground's 64² images are shown 4x (nearest), FLUX's 1024² as they are. */
export const MIN_TILE_PX = 256;
/** The most an image is enlarged: past it a tiny image is a placeholder, not something to look at. */
const MAX_ENLARGEMENT = 4;

/** `images` are the worker's PNGs in seed order; the grid is ceil(√n) wide. Images narrower than `minTile` are
 *  enlarged by a whole factor, at most MAX_ENLARGEMENT (a small model's pixels stay crisp); larger ones keep their
 *  size. */
export async function composeImages(images: Buffer[], metadata: GenerationMetadata, minTile = 1): Promise<ComposedImages> {
  if (images.length === 0) throw new Error("no images to compose");
  const first = await sharp(images[0]).metadata();
  const scale = Math.min(MAX_ENLARGEMENT, Math.max(1, Math.floor(minTile / Math.max(1, first.width ?? 1))));
  const tileWidth = (first.width ?? 0) * scale;
  const tileHeight = (first.height ?? 0) * scale;
  const columns = Math.ceil(Math.sqrt(images.length));
  const rows = Math.ceil(images.length / columns);
  // Nearest-neighbour upscaling keeps a small model's pixels crisp instead of blurring them.
  const tiles = await Promise.all(images.map((png) =>
    sharp(png).resize(tileWidth, tileHeight, { kernel: "nearest" }).png().toBuffer()));
  const canvas = sharp({ create: { width: tileWidth * columns, height: tileHeight * rows, channels: 3, background: "#000000" } })
    .composite(tiles.map((tile, index) => ({ input: tile, left: (index % columns) * tileWidth, top: Math.floor(index / columns) * tileHeight })));
  const gridPng = await canvas.png().toBuffer();
  const text = (seeds: number[]) => ({
    Software: "AutoLoRA bot",
    parameters: JSON.stringify({ ...metadata, seeds }),
  });
  return {
    grid: withPngText(gridPng, text(metadata.seeds)),
    gridWebp: await sharp(gridPng).webp({ quality: 85 }).toBuffer(),
    singles: tiles.map((tile, index) => withPngText(tile, text([metadata.seeds[index]!]))),
    width: tileWidth * columns,
    height: tileHeight * rows,
  };
}
