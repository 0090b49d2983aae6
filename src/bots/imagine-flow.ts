// One /imagine as a chat sees it: an acknowledgement with the place in line, progress edits (step count and the
// worker's low-res preview, no more often than the chat tolerates), then the grid with its buttons. Slash
// commands, variations and rerolls all go through here.
import type { GenerationRecord } from "../pipeline/generations.js";
import type { Fusion, ImagineResult, ImagineUpdate } from "../pipeline/imagine.js";
import { describeParts } from "../pipeline/retrieval.js";
import type { CommandContext, Reply } from "./commands.js";
import { buttonId, type BotButton, type BotMessage } from "./messages.js";

export interface ImagineRequest {
  prompt: string;
  user: string;
  /** LoRA ids to use instead of retrieving; [] for none. */
  loras?: string[];
  k?: number;
  fusion?: Fusion;
  seed?: number;
  seeds?: number[];
  width?: number;
  height?: number;
  signal?: AbortSignal;
  /** Shown above the prompt, e.g. "Variation 2 of …". */
  title?: string;
  /** A job accepted before a restart, taken up again under its id (it is journaled already). */
  id?: string;
  resumed?: boolean;
}

export interface FlowSettings {
  /** The least time between two progress edits of one message. */
  progressIntervalMs: number;
  /** Emoji → rating value, shown as rating buttons. */
  reactions: Record<string, number>;
}

/** Queue the request and answer through `reply` until the grid is shown; resolves when it is. */
export async function imagineInChat(request: ImagineRequest, context: CommandContext, reply: Reply,
  settings: FlowSettings): Promise<ImagineResult> {
  let position = 0;
  let warning = request.resumed ? "\n↻ taken up again after the bot restarted" : "";
  let chosen = false;
  const journal = context.journal;
  const edits = new ProgressEdits(reply, settings.progressIntervalMs);
  const heading = `${request.title ? `${request.title}: ` : ""}**${request.prompt}**`;
  const job = context.pipeline.imagine(request.prompt, {
    id: request.id, user: request.user, k: request.k, fusion: request.fusion, seed: request.seed, seeds: request.seeds,
    loras: request.loras, width: request.width, height: request.height, signal: request.signal,
    onUpdate: (update) => {
      if (update.type === "queued") position = update.position;
      // After a retry the warning stays under the progress, so the restart from step 1 is not a mystery.
      if (update.type === "retry") warning = `\n⚠️ ${update.message}`;
      // Taken up again, the job keeps the LoRAs chosen for it, whatever the pool holds by then.
      if (update.type === "retrieved" && !chosen) {
        chosen = true;
        void journal?.update(job.id, { loras: update.loras.map((hit) => hit.lora.id) }).catch(() => undefined);
      }
      edits.push(progressMessage(heading, update, warning));
    },
  });
  // The queue told us our place synchronously; the acknowledgement carries it.
  try {
    await edits.first({ text: `${heading}${warning}\n${position > 0 ? `⏳ queued: ${ordinal(position)} in line` : "⏳ starting…"}` });
  } catch (error) {
    job.cancel(); // nobody would see the result
    job.result.catch(() => undefined);
    throw error;
  }
  const address = reply.address?.();
  const kept = journal !== undefined && (request.resumed || address !== undefined);
  if (journal && address !== undefined && !request.resumed) {
    await journal.accept({
      id: job.id, adapter: request.user.slice(0, request.user.indexOf(":")), address, prompt: request.prompt, user: request.user,
      seeds: job.seeds, ...(request.loras ? { loras: request.loras } : {}), ...(request.k !== undefined ? { k: request.k } : {}),
      ...(request.fusion ? { fusion: request.fusion } : {}), ...(request.width ? { width: request.width, height: request.height } : {}),
      ...(request.title ? { title: request.title } : {}), accepted_at: new Date().toISOString(),
    }).catch((error: unknown) => journal.log(`[jobs] job ${job.id} is not journaled (${error instanceof Error ? error.message : String(error)}); a restart would lose it`));
  }
  const forget = () => kept ? journal.finish(job.id).catch(() => undefined) : undefined;
  let made: ImagineResult | undefined;
  try {
    made = await job.result;
    await edits.final(resultMessage(made.generation, made.loras.map((hit) => ({ name: hit.lora.name, similarity: hit.similarity })),
      made.files.gridWebp, settings.reactions, request.title));
    await forget();
    return made;
  } catch (error) {
    // Stopped by the host going down, or made but not posted: the journal keeps it for the next start.
    if (kept && (journal.stopping || made)) {
      if (error instanceof Error) Object.assign(error, { shown: true });
      throw error;
    }
    const code = (error as { code?: string }).code;
    await edits.final({ text: `${heading}\n${code === "job-cancelled" ? "cancelled" : `❌ ${error instanceof Error ? error.message : String(error)}`}`, error: true });
    await forget();
    // The message says what went wrong; callers need not say it again.
    if (error instanceof Error) Object.assign(error, { shown: true });
    throw error;
  }
}

function progressMessage(heading: string, update: ImagineUpdate, warning = ""): BotMessage {
  switch (update.type) {
    case "queued": return { text: `${heading}\n⏳ queued: ${ordinal(update.position)} in line` };
    case "started": return { text: `${heading}\n🔎 choosing LoRAs…` };
    case "retrieved": return { text: `${heading}\n🎨 drawing with ${update.loras.length ? update.loras.map((hit) => hit.lora.name).join(", ") : "no LoRA"}…` };
    case "progress": return {
      text: `${heading}${warning}\n🎨 step ${update.step} of ${update.total}`,
      ...(update.preview ? { image: { name: "preview.png", data: Buffer.from(update.preview, "base64") } } : {}),
    };
    case "retry": return { text: `${heading}${warning}` };
  }
}

/** The finished grid: caption, image and the U/V/🔄/ℹ️/rating/🗑 buttons, all naming the generation. */
export function resultMessage(generation: GenerationRecord, loras: Array<{ name: string; similarity: number }>, grid: string,
  reactions: Record<string, number>, title?: string): BotMessage {
  const count = Math.min(4, generation.seeds.length);
  const numbered = (action: "upscale" | "vary", letter: string): BotButton[] =>
    Array.from({ length: count }, (_, index) => ({ id: buttonId(action, generation.id, String(index + 1)), label: `${letter}${index + 1}` }));
  const ratings = Object.entries(reactions).slice(0, 4).map(([emoji, value]): BotButton =>
    ({ id: buttonId("rate", generation.id, String(value)), label: emoji }));
  const used = loras.length ? loras.map((lora) => `${lora.name} (${lora.similarity.toFixed(2)})`).join(", ") : "none";
  return {
    text: `${title ? `${title}: ` : ""}**${generation.prompt}**\nLoRAs: ${used} · fusion ${generation.fusion}${generation.fusion_note ? ` (${generation.fusion_note})` : ""} · seed ${generation.seeds[0]}`,
    image: { name: "grid.webp", path: grid },
    generation: generation.id,
    buttons: [
      [...numbered("upscale", "U"), { id: buttonId("reroll", generation.id), label: "🔄" }],
      [...numbered("vary", "V"), { id: buttonId("info", generation.id), label: "ℹ️" }],
      [...ratings, { id: buttonId("delete", generation.id), label: "🗑", style: "danger" }],
    ],
  };
}

/** What ℹ️ shows. */
export function infoText(generation: GenerationRecord): string {
  const loras = generation.loras.length
    ? generation.loras.map((lora) => `• ${lora.name} \`${lora.id.slice(0, 12)}\` similarity ${lora.similarity.toFixed(3)}` +
      `${lora.parts ? ` (${describeParts(lora.parts)})` : ""}${lora.covers ? ` · covers “${lora.covers}”` : ""}`).join("\n")
    : "• none";
  const seconds = (generation.timings.total_ms ?? 0) / 1000;
  return [
    `**${generation.prompt}**`,
    `seeds: ${generation.seeds.join(", ")}`,
    `fusion: ${generation.fusion}${generation.fusion_note ? ` (${generation.fusion_note})` : ""}` +
      `${generation.width ? ` · size ${generation.width}×${generation.height}` : ""}`,
    `LoRAs:\n${loras}`,
    `model ${generation.model_version} · gates ${generation.gate_version ?? "none"}`,
    `requested by ${generation.user} · ${generation.created_at} · ${seconds.toFixed(1)} s`,
  ].join("\n");
}

function ordinal(position: number): string {
  return position === 1 ? "next" : `#${position}`;
}

/**
 * Serialises the edits of one message and drops intermediate progress that comes faster than the chat allows:
 * the latest state always wins, and the final message waits for any edit in flight so it is never overwritten.
 */
class ProgressEdits {
  private chain: Promise<void> = Promise.resolve();
  private pending: BotMessage | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lastSent = 0;
  private opened = false;
  private closed = false;

  constructor(private readonly reply: Reply, private readonly intervalMs: number) {}

  first(message: BotMessage): Promise<void> {
    this.opened = true;
    this.lastSent = Date.now();
    this.chain = this.chain.then(() => this.reply.send(message));
    return this.chain;
  }

  push(message: BotMessage): void {
    if (this.closed) return;
    this.pending = message;
    if (!this.opened || this.timer) return;
    const wait = Math.max(0, this.lastSent + this.intervalMs - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const next = this.pending;
      this.pending = undefined;
      if (!next || this.closed) return;
      this.lastSent = Date.now();
      this.chain = this.chain.then(() => this.reply.send(next)).catch(() => undefined);
    }, wait);
  }

  async final(message: BotMessage): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.chain = this.chain.catch(() => undefined).then(() => this.reply.send(message));
    await this.chain;
  }
}
