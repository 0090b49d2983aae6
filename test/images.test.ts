// The grid a user sees: a small model's images are enlarged (at most 4x) to stay visible, a FLUX-size image keeps
// its size (a 2x2 grid of 1024² images is 2048², not the 8192² a fixed 4x enlargement made).
import sharp from "sharp";
import { describe, expect, it } from "vitest";
import { composeImages, MIN_TILE_PX } from "../src/pipeline/images.js";

const png = (side: number) => sharp({ create: { width: side, height: side, channels: 3, background: "#336699" } }).png().toBuffer();
const metadata = { prompt: "a star", seeds: [1, 2, 3, 4], loras: [], fusion: "direct", model_version: "m", gate_version: "g" };

describe("composing a generation's grid", () => {
  it.each([[1, 4], [16, 64], [64, 256], [128, 256], [256, 256], [1024, 1024]])("shows %i px images as %i px tiles", async (side, tile) => {
    const images = await composeImages(await Promise.all([1, 2, 3, 4].map(() => png(side))), metadata, MIN_TILE_PX);
    expect(await sharp(images.grid).metadata()).toMatchObject({ width: 2 * tile, height: 2 * tile });
    expect(await sharp(images.singles[0]!).metadata()).toMatchObject({ width: tile, height: tile });
  });
});
