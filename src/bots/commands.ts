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
  commands: CommandRegistry;
  pipeline: ImaginePipeline;
  retriever: Retriever;
  index: LoraIndex;
  store: LoraStore;
  /** Ingest a file the host can read (admin `/lora add`). */
  ingest: (path: string, metadata: IngestMetadata) => Promise<IngestResult>;
  k: number;
  minSimilarity: number;
}

/** One chat command. Built-ins and plugins alike register through `CommandRegistry.add`. */
export interface ChatCommand {
  /** Including the slash, e.g. "/imagine". */
  name: string;
  /** One line for /help. */
  usage: string;
  adminOnly?: boolean;
  run(body: string, requester: Requester, context: CommandContext, reply: Reply, signal?: AbortSignal): Promise<void>;
}

export class CommandRegistry {
  private readonly commands = new Map<string, ChatCommand>();

  add(command: ChatCommand): void {
    if (!/^\/[a-z][a-z0-9-]{0,31}$/.test(command.name)) {
      throw new Error(`command name ${JSON.stringify(command.name)} must be a slash and 1-32 lower-case letters, digits or dashes`);
    }
    if (this.commands.has(command.name)) throw new Error(`the command ${command.name} is already registered`);
    this.commands.set(command.name, command);
  }

  get(name: string): ChatCommand | undefined {
    return this.commands.get(name);
  }

  help(admin: boolean): string {
    return [...this.commands.values()].filter((command) => admin || !command.adminOnly)
      .map((command) => `${command.usage}${command.adminOnly ? " (admins)" : ""}`).join("\n");
  }
}

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
  const [name = "", ...words] = line.trim().split(/\s+/);
  const command = context.commands.get(name === "" ? "/help" : name);
  if (!command) return reply.error(`unknown command ${name}; try /help`);
  if (command.adminOnly && !requester.admin) return reply.error(`only admins can use ${command.name}`);
  try {
    await command.run(words.join(" "), requester, context, reply, signal);
  } catch (error) {
    if (error instanceof QueueFullError) return reply.error(error.message);
    const code = (error as { code?: string }).code;
    reply.error(code === "job-cancelled" ? "cancelled" : error instanceof Error ? error.message : String(error));
  }
}

export const BUILTIN_COMMANDS: ChatCommand[] = [
  {
    name: "/imagine",
    usage: "/imagine PROMPT [--fusion none|direct|dare|klora|gated] [--k 0-8] [--seed N]: draw it, with the pool's best LoRAs",
    async run(body, requester, context, reply, signal) {
      const { rest, flags } = splitFlags(body);
      const unknown = Object.keys(flags).filter((flag) => !["fusion", "k", "seed"].includes(flag));
      if (unknown.length > 0) return reply.error(`unknown option --${unknown[0]}; /imagine takes --fusion, --k and --seed`);
      const parsed = imagineFlags.safeParse(flags);
      if (!parsed.success) {
        const issue = parsed.error.issues[0]!;
        return reply.error(`--${issue.path.join(".")}: ${issue.message}`);
      }
      const job = context.pipeline.imagine(rest, { user: requester.id, ...parsed.data, signal, onUpdate: (update) => reply.progress(update) });
      reply.result(await job.result);
    },
  },
  {
    name: "/loras",
    usage: "/loras TEXT: which LoRAs a prompt would use, with their similarity",
    async run(body, _requester, context, reply) {
      if (!body) return reply.error("say what to look for, e.g. /loras striped hexagon");
      const { hits } = await context.retriever.retrieve(body, { k: Math.max(context.k, 5), minSimilarity: -1 });
      reply.loras(hits);
    },
  },
  {
    name: "/lora",
    usage: "/lora add PATH [--name N] [--tags a,b] · /lora block|unblock|remove ID",
    adminOnly: true,
    run: (body, requester, context, reply) => loraAdmin(body.split(/\s+/).filter(Boolean), requester, context, reply),
  },
  {
    name: "/help",
    usage: "/help: this list",
    async run(_body, requester, context, reply) {
      reply.text(context.commands.help(requester.admin));
    },
  },
];

/** A registry holding the built-in commands. */
export function builtinCommands(): CommandRegistry {
  const registry = new CommandRegistry();
  for (const command of BUILTIN_COMMANDS) registry.add(command);
  return registry;
}

async function loraAdmin(words: string[], requester: Requester, context: CommandContext, reply: Reply): Promise<void> {
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
    const matches = await context.index.findByPrefix(rest, 2);
    if (matches.length !== 1) {
      return reply.error(matches.length === 0 ? `no LoRA ${rest || "(no id given)"}; give 8+ characters of its sha256` : `${rest} matches more than one LoRA`);
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
