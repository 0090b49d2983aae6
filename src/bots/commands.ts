// The chat commands as data: each has typed options (Discord registers them as slash-command options; the web
// chat and Slack parse them from typed text with `parseCommandText`), an admin flag and a `run` that answers
// through a `Reply`. Built-ins and plugins register the same way; `ChatCore` runs them for every adapter.
import { z } from "zod";
import type { GenerationStore } from "../pipeline/generations.js";
import type { ImaginePipeline } from "../pipeline/imagine.js";
import type { JobJournal } from "../pipeline/journal.js";
import type { Retriever, SelectionSettings } from "../pipeline/retrieval.js";
import type { LoraIndex } from "../pool/index.js";
import type { IngestMetadata, IngestResult } from "../pool/ingest.js";
import type { LoraStore } from "../pool/store.js";
import type { BotMessage } from "./messages.js";

export interface Requester {
  /** "<adapter>:<user id>", e.g. web:3f2a…, discord:1234, slack:U0123 */
  id: string;
  name: string;
  admin: boolean;
}

/** A file attached to a command (Discord attachments). */
export interface Attachment {
  name: string;
  url: string;
  size: number;
}

export type OptionValue = string | number | Attachment;

export interface OptionSpec {
  name: string;
  description: string;
  type: "string" | "integer" | "attachment";
  required?: boolean;
  choices?: readonly string[];
  min?: number;
  max?: number;
  maxLength?: number;
  /** Offer completions while the user types (LoRA names); the command's `complete` answers. */
  autocomplete?: boolean;
  /** In typed commands (web, Slack), the words not given as `name:value` fill this option. */
  rest?: boolean;
}

export interface SubcommandSpec {
  name: string;
  description: string;
  options?: OptionSpec[];
  adminOnly?: boolean;
}

export interface CommandCall {
  command: string;
  subcommand?: string;
  options: Record<string, OptionValue>;
  requester: Requester;
  signal?: AbortSignal;
}

/** An answer being written: the first `send` acknowledges, later ones edit the same message. */
export interface Reply {
  send(message: BotMessage): Promise<void>;
  /** A further message, e.g. an image a button asked for. */
  followUp(message: BotMessage): Promise<void>;
  /** Where the first message is (its adapter's `reopen` takes it after a restart), once sent and if it can be. */
  address?(): unknown;
}

export interface PoolStatus {
  loras: number;
  blocked: number;
  /** How the LoRAs are found: by their weights' embedding, by their text only (no LoRA encoder for their family
   *  yet), or not at all (neither). */
  searchable?: { weights: number; textOnly: number; none: number };
  lastCrawl: string | null;
  /** This host's queue; `shared`: the Redis queue's, over every host (queue.backend redis). */
  queue: { waiting: number; running: number; shared?: { waiting: number; running: number } };
  workers: Array<{ id: string; state: string; model?: string; modelVersion?: string; gateVersion?: string | null; encoderVersion?: string | null }>;
}

/** How the bot behaves in chat, from the config's `chat` section. */
export interface ChatSettings {
  /** "<adapter>:<user id>" or "<adapter>:role:<role id>" (Discord roles). */
  admins: string[];
  /** Emoji → rating value, for reactions and the rating buttons. */
  reactions: Record<string, number>;
  /** Generations (/imagine, variations, rerolls) one user may start per minute and per day; 0 = no limit. */
  perMinute: number;
  perDay: number;
  maxPromptChars: number;
  /** The least time between two progress edits of one message. */
  progressIntervalMs: number;
}

/** `selection`, `covering` and `hybrid`: how /imagine picks its LoRAs (default top-k, weights only), so /loras
 *  shows the same picks. */
export interface CommandContext extends SelectionSettings {
  commands: CommandRegistry;
  chat: ChatSettings;
  /** Where generated images live (the config's data_dir). */
  dataDir: string;
  pipeline: ImaginePipeline;
  retriever: Retriever;
  index: LoraIndex;
  store: LoraStore;
  generations: GenerationStore;
  /** Download (https, size-capped) and ingest a LoRA for `/lora add`. */
  addFromUrl: (url: string, metadata: IngestMetadata) => Promise<IngestResult>;
  /** What `/pool status` shows. */
  status: () => Promise<PoolStatus>;
  /** Accepted /imagine jobs kept on disk until answered, taken up again after a restart. Absent: not kept. */
  journal?: JobJournal;
  /** Start retraining the gates now; resolves to a line saying what was started. Absent where no trainer runs. */
  retrain?: () => Promise<string>;
  k: number;
  minSimilarity: number;
}

/** One chat command. Built-ins and plugins alike register through `CommandRegistry.add`. */
export interface ChatCommand {
  /** Without the slash: 1-32 lower-case letters, digits or dashes (Discord's rule). */
  name: string;
  /** One line, shown in Discord's command picker and /help (at most 100 characters). */
  description: string;
  options?: OptionSpec[];
  subcommands?: SubcommandSpec[];
  adminOnly?: boolean;
  /** Answer only the person who asked (lists, admin tools). */
  private?: boolean;
  run(call: CommandCall, context: CommandContext, reply: Reply): Promise<void>;
  /** Suggestions for an option with `autocomplete`, at most 25 (Discord's limit). */
  complete?(option: string, typed: string, context: CommandContext): Promise<Array<{ name: string; value: string }>>;
}

const NAME = /^[a-z][a-z0-9-]{0,31}$/;

export class CommandRegistry {
  private readonly commands = new Map<string, ChatCommand>();

  add(command: ChatCommand): void {
    if (!NAME.test(command.name ?? "")) {
      throw new Error(`command name ${JSON.stringify(command.name)} must be 1-32 lower-case letters, digits or dashes, without the slash`);
    }
    if (!command.description || command.description.length > 100) {
      throw new Error(`command ${command.name} needs a description of 1-100 characters`);
    }
    if (this.commands.has(command.name)) throw new Error(`the command /${command.name} is already registered`);
    this.commands.set(command.name, command);
  }

  get(name: string): ChatCommand | undefined {
    return this.commands.get(name);
  }

  all(): ChatCommand[] {
    return [...this.commands.values()];
  }

  help(admin: boolean): string {
    const lines: string[] = [];
    for (const command of this.commands.values()) {
      if (command.adminOnly && !admin) continue;
      if (command.subcommands) {
        for (const sub of command.subcommands) {
          if (sub.adminOnly && !admin) continue;
          lines.push(`/${command.name} ${sub.name}${usage(sub.options)}: ${sub.description}${sub.adminOnly || command.adminOnly ? " (admins)" : ""}`);
        }
      } else {
        lines.push(`/${command.name}${usage(command.options)}: ${command.description}${command.adminOnly ? " (admins)" : ""}`);
      }
    }
    return lines.join("\n");
  }
}

function usage(options: OptionSpec[] = []): string {
  return options.map((option) => option.required ? ` ${option.name}:…` : ` [${option.name}:…]`).join("");
}

/** The options a command (or its subcommand) takes. */
export function optionsOf(command: ChatCommand, subcommand?: string): OptionSpec[] {
  return command.subcommands?.find((sub) => sub.name === subcommand)?.options ?? command.options ?? [];
}

export class CommandInputError extends Error {
  override readonly name = "CommandInputError";
  readonly code = "bad-command";
}

/**
 * A typed line (`/imagine a red hexagon k:2 fusion:direct`, `/lora block 1a2b3c4d`) as a command call. Known
 * options are taken as `name:value` (or `--name value`) anywhere in the line, each at most once; the remaining
 * words fill the option marked `rest`, or else the first string option. A word shaped like an option
 * (`lower-case-name:value`) that names none is refused, not folded into the text; other colons are text (`12:30`,
 * `16:9`, `https://…`, `Note:x`, `style: watercolor`), and a backslash keeps an option-shaped word as text
 * (`foo\:bar` is the text `foo:bar`). Throws CommandInputError saying what to change.
 */
export function parseCommandText(line: string, registry: CommandRegistry): { command: ChatCommand; subcommand?: string; options: Record<string, string> } {
  const words = line.trim().split(/\s+/).filter(Boolean);
  const commandName = (words.shift() ?? "/help").replace(/^\//, "");
  const command = registry.get(commandName);
  if (!command) throw new CommandInputError(`unknown command /${commandName}; try /help`);
  let subcommand: string | undefined;
  if (command.subcommands) {
    subcommand = words.shift();
    if (!subcommand || !command.subcommands.some((sub) => sub.name === subcommand)) {
      throw new CommandInputError(`/${commandName} needs one of: ${command.subcommands.map((sub) => sub.name).join(", ")}`);
    }
  }
  const label = `/${commandName}${subcommand ? ` ${subcommand}` : ""}`;
  const specs = optionsOf(command, subcommand);
  const taken = specs.map((spec) => spec.name).join(", ");
  const restSpec = specs.find((spec) => spec.rest);
  const options: Record<string, string> = {};
  const given = new Set<string>();
  const rest: string[] = [];
  // A free-text option (`name:neon glow`, `loras:hexagon shapes, stripes`) runs to the next option; numbers and
  // choices are one word, after which words go back to the prompt.
  let open: string | undefined;
  const text = (word: string) => {
    if (open) options[open] = `${options[open]} ${word}`.trim();
    else rest.push(word);
  };
  const take = (spec: OptionSpec, value: string, written: string) => {
    if (given.has(spec.name)) throw new CommandInputError(`${spec.name} is given twice; give it once`);
    given.add(spec.name);
    const freeText = spec.type === "string" && !spec.choices;
    if (!freeText && value === "") {
      throw new CommandInputError(`${written} needs its value right after the colon, e.g. ${spec.name}:${exampleOf(spec)}`);
    }
    // The rest option's own words keep their place among the others (`red prompt:a cat` is "red a cat").
    if (spec.rest) rest.push(...(value ? [value] : []));
    else options[spec.name] = value;
    open = freeText && !spec.rest ? spec.name : undefined;
  };
  for (let i = 0; i < words.length; i++) {
    const word = words[i]!;
    const escaped = /^([a-z][a-z0-9_-]*)\\:(.*)$/.exec(word);
    const option = /^([a-z][a-z0-9_-]*):(.*)$/.exec(word);
    const spec = option ? specs.find((entry) => entry.name === option[1]) : undefined;
    if (escaped) {
      text(`${escaped[1]}:${escaped[2]}`);
    } else if (option && spec) {
      take(spec, option[2]!, `${spec.name}:`);
    } else if (option && option[2] !== "" && !option[2]!.startsWith("//")) {
      // Not prose ("note: …") nor a URL ("https://…"): a mistyped or unknown option, which must not reach the prompt.
      const keep = specs.some((entry) => entry.type === "string" && !entry.choices) ? `. To keep "${word}" as text, write ${option[1]}\\:${option[2]}` : "";
      throw new CommandInputError(`${label} has no option ${option[1]} (in "${word}"); it takes ${taken || "no options"}${keep}`);
    } else if (word.startsWith("--") && word.length > 2) {
      const named = specs.find((entry) => entry.name === word.slice(2));
      if (!named) throw new CommandInputError(`unknown option ${word}; ${label} takes ${taken || "no options"}`);
      if (i + 1 >= words.length) throw new CommandInputError(`${word} needs a value after it, e.g. ${word} ${exampleOf(named)}`);
      take(named, words[++i]!, word);
    } else {
      text(word);
    }
  }
  if (rest.length > 0) {
    const target = restSpec ?? specs.find((spec) => spec.type === "string" && options[spec.name] === undefined);
    if (!target) throw new CommandInputError(`${label} does not take "${rest.join(" ")}"`);
    options[target.name] = [options[target.name], ...rest].filter(Boolean).join(" ");
  }
  return { command, subcommand, options };
}

/** A value to show in a hint about an option. */
function exampleOf(spec: OptionSpec): string {
  return spec.choices?.[0] ?? (spec.type === "integer" ? String(spec.min ?? 1) : "text");
}

/** " from 1 to 5", " from 0", " up to 9" or "": the range a whole-number option takes, for its messages. */
function rangeOf(spec: OptionSpec): string {
  if (spec.min !== undefined) return ` from ${spec.min}${spec.max !== undefined ? ` to ${spec.max}` : ""}`;
  return spec.max !== undefined ? ` up to ${spec.max}` : "";
}

/** Check and convert option values against their specs (whichever adapter they came from). */
export function validateOptions(specs: OptionSpec[], given: Record<string, OptionValue>, label: string): Record<string, OptionValue> {
  const schema = schemaOf(specs);
  const unknown = Object.keys(given).filter((key) => !(key in schema.shape));
  if (unknown.length > 0) throw new CommandInputError(`${label} has no option ${unknown[0]}; it takes ${specs.map((spec) => spec.name).join(", ") || "none"}`);
  const parsed = schema.safeParse(given);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const missing = issue.path.length > 0 && given[String(issue.path[0])] === undefined;
    throw new CommandInputError(missing ? `${label} needs ${String(issue.path[0])}` : issue.message);
  }
  return parsed.data as Record<string, OptionValue>;
}

/**
 * One schema per option list, built on its first use: zod compiles a schema when it first parses, which costs
 * about a millisecond, and in a burst of commands that time came before every acknowledgement still to send.
 */
const schemas = new WeakMap<OptionSpec[], z.ZodObject<Record<string, z.ZodType>>>();

function schemaOf(specs: OptionSpec[]): z.ZodObject<Record<string, z.ZodType>> {
  let schema = schemas.get(specs);
  if (!schema) {
    schema = buildSchema(specs);
    schemas.set(specs, schema);
  }
  return schema;
}

function buildSchema(specs: OptionSpec[]): z.ZodObject<Record<string, z.ZodType>> {
  const shape: Record<string, z.ZodType> = {};
  for (const spec of specs) {
    let schema: z.ZodType;
    if (spec.type === "integer") {
      const wholeNumber = `${spec.name} must be a whole number${rangeOf(spec)}`;
      let number = z.int({ error: wholeNumber });
      if (spec.min !== undefined) number = number.min(spec.min, `${spec.name} must be at least ${spec.min}`);
      if (spec.max !== undefined) number = number.max(spec.max, `${spec.name} must be at most ${spec.max}`);
      // Discord gives numbers; typed lines give text, read as decimal digits only (a plain Number() would take
      // "0x3", "1e0", "3.0" or "" too).
      schema = z.union([z.number(), z.string()], { error: wholeNumber }).transform((value, context) => {
        if (typeof value === "number" || /^-?\d+$/.test(value)) return Number(value);
        context.addIssue({
          code: "custom",
          message: value === "" ? `${spec.name} is empty; give a whole number${rangeOf(spec)}` : `${wholeNumber}, written in digits; ${JSON.stringify(value)} is not`,
        });
        return z.NEVER;
      }).pipe(number);
    } else if (spec.type === "attachment") {
      schema = z.object({ name: z.string(), url: z.string(), size: z.number() }, { error: `${spec.name} must be an attached file` });
    } else if (spec.choices) {
      schema = z.enum(spec.choices as [string, ...string[]], { error: `${spec.name} must be one of ${spec.choices.join(", ")}` });
    } else {
      let text = z.string().trim().min(1, `${spec.name} is empty`);
      const limit = spec.maxLength;
      if (limit !== undefined) {
        text = text.max(limit, { error: (issue) => `the ${spec.name} is ${String(issue.input).length} characters; the limit is ${limit}` });
      }
      schema = text;
    }
    shape[spec.name] = spec.required ? schema : schema.optional();
  }
  return z.strictObject(shape);
}
