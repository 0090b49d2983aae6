// The chat commands every adapter offers (web, Discord, Slack): parsed from text here, answered through a
// `Reply` the adapter implements, so each command behaves the same whichever chat it came from.
import { z } from "zod";
import { QueueFullError } from "../pipeline/queue.js";
import type { ImaginePipeline, ImagineUpdate, ImagineResult } from "../pipeline/imagine.js";
import { FUSIONS } from "../pipeline/imagine.js";
import type { Retriever } from "../pipeline/retrieval.js";
import type { LoraIndex, SearchHit } from "../pool/index.js";
import type { IngestMetadata, IngestResult } from "../pool/ingest.js";
import type { LoraStore } from "../pool/store.js";

export interface Requester {
  /** "<adapter>:<user id>", e.g. web:3f2a…, discord:1234 */
  id: string;
  name: string;
  admin: boolean;
}

/** How a command answers: one message it can keep updating, then a final state. */
export interface Reply {
  text(message: string): void;
  progress(update: ImagineUpdate): void;
  result(result: ImagineResult): void;
  loras(hits: SearchHit[]): void;
  error(message: string): void;
}

export interface CommandContext {
  pipeline: ImaginePipeline;
  retriever: Retriever;
  index: LoraIndex;
  store: LoraStore;
  /** Ingest a file the host can read (admin `/lora add`). */
  ingest: (path: string, metadata: IngestMetadata) => Promise<IngestResult>;
  k: number;
  minSimilarity: number;
}

export const HELP = [
  "/imagine PROMPT [--fusion none|direct|dare|klora|gated] [--k 0-8] [--seed N]: draw it, with the pool's best LoRAs",
  "/loras TEXT: which LoRAs a prompt would use, with their similarity",
  "/help: this list",
  "admins: /lora add PATH [--name N] [--tags a,b] · /lora block ID · /lora unblock ID · /lora remove ID",
].join("\n");

const imagineFlags = z.object({
  fusion: z.enum(FUSIONS).optional(),
  k: z.coerce.number().int().min(0).max(8).optional(),
  seed: z.coerce.number().int().min(0).max(2 ** 32).optional(),
});

/** Split "--name value" flags off the end of a command's text. */
function splitFlags(text: string): { rest: string; flags: Record<string, string> } {
  const flags: Record<string, string> = {};
  const words = text.split(/\s+/);
  const rest: string[] = [];
  for (let i = 0; i < words.length; i++) {
    const word = words[i]!;
    if (word.startsWith("--") && word.length > 2 && i + 1 < words.length) flags[word.slice(2)] = words[++i]!;
    else rest.push(word);
  }
  return { rest: rest.join(" ").trim(), flags };
}

/** Run one line typed by `requester`. Cancelling `signal` cancels an /imagine it started. */
export async function runCommand(line: string, requester: Requester, context: CommandContext, reply: Reply,
  signal?: AbortSignal): Promise<void> {
  const trimmed = line.trim();
  const [command = "", ...words] = trimmed.split(/\s+/);
  const body = words.join(" ");
  try {
    switch (command) {
      case "/imagine": {
        const { rest, flags } = splitFlags(body);
        const parsed = imagineFlags.safeParse(flags);
        const unknown = Object.keys(flags).filter((flag) => !["fusion", "k", "seed"].includes(flag));
        if (unknown.length > 0) return reply.error(`unknown option --${unknown[0]}; /imagine takes --fusion, --k and --seed`);
        if (!parsed.success) {
          const issue = parsed.error.issues[0]!;
          return reply.error(`--${issue.path.join(".")}: ${issue.message}`);
        }
        const job = context.pipeline.imagine(rest, { user: requester.id, ...parsed.data, signal, onUpdate: (update) => reply.progress(update) });
        return reply.result(await job.result);
      }
      case "/loras": {
        if (!body) return reply.error("say what to look for, e.g. /loras striped hexagon");
        const { hits } = await context.retriever.retrieve(body, { k: Math.max(context.k, 5), minSimilarity: -1 });
        return reply.loras(hits);
      }
      case "/lora":
        return await loraAdmin(words, requester, context, reply);
      case "/help":
      case "":
        return reply.text(HELP);
      default:
        return reply.error(`unknown command ${command}; try /help`);
    }
  } catch (error) {
    if (error instanceof QueueFullError) return reply.error(error.message);
    const code = (error as { code?: string }).code;
    reply.error(code === "job-cancelled" ? "cancelled" : error instanceof Error ? error.message : String(error));
  }
}

async function loraAdmin(words: string[], requester: Requester, context: CommandContext, reply: Reply): Promise<void> {
  if (!requester.admin) return reply.error("only admins can change the LoRA pool");
  const [action, ...args] = words;
  const { rest, flags } = splitFlags(args.join(" "));
  if (action === "add") {
    if (!rest) return reply.error("usage: /lora add PATH [--name N] [--tags a,b]");
    const result = await context.ingest(rest, {
      name: flags.name, source: "admin", tags: flags.tags?.split(",").map((tag) => tag.trim()).filter(Boolean),
    });
    return reply.text(`${result.status === "added" ? "added" : "already in the pool"}: ${result.lora.name} ` +
      `(${result.lora.id.slice(0, 12)}, ${result.lora.format}, ${result.lora.family})`);
  }
  if (action === "block" || action === "unblock" || action === "remove") {
    const matches = (await context.index.list({}, 1_000_000)).filter((lora) => rest.length >= 8 && lora.id.startsWith(rest));
    if (matches.length !== 1) {
      return reply.error(matches.length === 0 ? `no LoRA ${rest || "(no id given)"}; give 8+ characters of its sha256` : `${rest} matches ${matches.length} LoRAs`);
    }
    const lora = matches[0]!;
    if (action === "remove") {
      await context.index.remove(lora.id);
      await context.store.remove(lora.id);
    }
    else await context.index.setState(lora.id, action === "block" ? "blocked" : "active");
    return reply.text(`${action === "remove" ? "removed" : `${action}ed`} ${lora.name} (${lora.id.slice(0, 12)})`);
  }
  reply.error("usage: /lora add PATH · /lora block ID · /lora unblock ID · /lora remove ID");
}
