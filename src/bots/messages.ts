// What the bot says, independent of the chat it says it on: a message is text, at most one image and rows of
// buttons. Adapters translate a `BotMessage` into a Discord payload, Slack blocks or the web page's JSON.
// Button ids carry the generation id, so a button pressed after a restart still knows what it acts on.
import { readFile } from "node:fs/promises";
import sharp from "sharp";

export interface BotButton {
  /** `autolora:<action>:<generation id>[:<argument>]`, at most 100 characters (Discord's limit). */
  id: string;
  label: string;
  style?: "primary" | "secondary" | "danger";
}

export interface BotImage {
  /** The file name shown in chat, e.g. grid.webp. */
  name: string;
  /** A file on the host (generated images)… */
  path?: string;
  /** …or the bytes themselves (low-res previews). */
  data?: Buffer;
}

export interface BotMessage {
  /** Plain text with **bold** and `code`; adapters convert to their markup. */
  text: string;
  image?: BotImage;
  buttons?: BotButton[][];
  /** Only the person who asked should see it (refusals, errors) where the chat can do that. */
  ephemeral?: boolean;
  /** An error or refusal: adapters may style it. */
  error?: boolean;
  /** The generation a finished result shows: reactions on this message rate it. */
  generation?: string;
}

export const BUTTON_ACTIONS = ["upscale", "vary", "reroll", "info", "delete", "rate"] as const;
export type ButtonAction = (typeof BUTTON_ACTIONS)[number];

export interface ButtonId {
  action: ButtonAction;
  generation: string;
  argument?: string;
}

const PREFIX = "autolora";

export function buttonId(action: ButtonAction, generation: string, argument?: string): string {
  const id = [PREFIX, action, generation, ...(argument === undefined ? [] : [argument])].join(":");
  if (id.length > 100) throw new Error(`button id ${id} is longer than 100 characters`);
  return id;
}

/** The button a custom id names, or undefined for ids this bot did not make. */
export function parseButtonId(id: string): ButtonId | undefined {
  const [prefix, action, generation, argument] = id.split(":");
  if (prefix !== PREFIX || !generation || !/^[\w-]{1,64}$/.test(generation)) return undefined;
  if (!(BUTTON_ACTIONS as readonly string[]).includes(action ?? "")) return undefined;
  return { action: action as ButtonAction, generation, ...(argument === undefined ? {} : { argument }) };
}

/**
 * The image's bytes, re-encoded as WebP and halved in size until they fit `limitBytes` (Discord takes 10 MiB a
 * file). Returns the name to upload under, which changes to .webp when the image had to be re-encoded.
 */
export async function imageUnder(image: BotImage, limitBytes: number): Promise<{ name: string; data: Buffer }> {
  const data = image.data ?? await readFile(image.path!);
  if (data.length <= limitBytes) return { name: image.name, data };
  const { width = 1024 } = await sharp(data).metadata();
  let scale = 1;
  for (let attempt = 0; attempt < 8; attempt++) {
    const smaller = await sharp(data).resize({ width: Math.max(16, Math.round(width * scale)) }).webp({ quality: 85 }).toBuffer();
    if (smaller.length <= limitBytes) return { name: image.name.replace(/\.\w+$/, "") + ".webp", data: smaller };
    scale /= 2;
  }
  throw new Error(`${image.name} cannot be made smaller than ${limitBytes} bytes`);
}
