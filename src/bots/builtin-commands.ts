// The commands every chat offers: /imagine, /loras, /lora (info for all; add, remove, block, unblock for
// admins), /pool status and /retrain now (admins), /help.
import { FUSIONS, MAX_LORAS_PER_JOB, MAX_PROMPT_CHARS, MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE, type Fusion } from "../gpu/protocol.js";
import type { LoraSummary } from "../pool/index.js";
import { describeParts, type RetrievedHit } from "../pipeline/retrieval.js";
import { CommandInputError, type Attachment, type ChatCommand, type CommandContext, type OptionSpec, type PoolStatus } from "./commands.js";
import { imagineInChat } from "./imagine-flow.js";

type Lora = LoraSummary;

// LoRAs a chat user may name or ask to retrieve for one /imagine: the chats' own cap, never above what a worker
// takes (MAX_LORAS_PER_JOB), up to which the config's retrieval.k may go.
const MAX_CHAT_LORAS = Math.min(5, MAX_LORAS_PER_JOB);

const loraOption = (description: string): OptionSpec =>
  ({ name: "lora", description, type: "string", required: true, autocomplete: true, rest: true });

const imagine: ChatCommand = {
  name: "imagine",
  description: "Draw a prompt, with the pool's best LoRAs fused in",
  options: [
    // No maxLength: the chat's own limit (chat.max_prompt_chars) is checked in run, with the prompt's length.
    { name: "prompt", description: "What to draw", type: "string", required: true, rest: true },
    { name: "loras", description: "auto (default), none, or LoRA names separated by commas", type: "string", autocomplete: true },
    { name: "k", description: `How many LoRAs to retrieve (1-${MAX_CHAT_LORAS})`, type: "integer", min: 1, max: MAX_CHAT_LORAS },
    { name: "fusion", description: "How the LoRAs are combined", type: "string", choices: FUSIONS.filter((fusion) => fusion !== "none") },
    { name: "seed", description: "First seed (the others follow it)", type: "integer", min: 0, max: 2 ** 32 - 1 },
    { name: "size", description: `WIDTHxHEIGHT in pixels, multiples of ${SIZE_MULTIPLE}, e.g. 1024x768`, type: "string" },
  ],
  async run(call, context, reply) {
    const prompt = String(call.options.prompt);
    if (prompt.length > context.chat.maxPromptChars) {
      throw new CommandInputError(`the prompt is ${prompt.length} characters; the limit is ${context.chat.maxPromptChars}`);
    }
    const loras = await chosenLoras(call.options.loras as string | undefined, context);
    await imagineInChat({
      prompt, user: call.requester.id, loras, k: call.options.k as number | undefined,
      fusion: call.options.fusion as Fusion | undefined, seed: call.options.seed as number | undefined,
      ...parseSize(call.options.size as string | undefined), signal: call.signal,
    }, context, reply, context.chat);
  },
  async complete(option, typed, context) {
    if (option !== "loras") return [];
    // Complete the name being typed after the last comma, keeping the ones before it.
    const parts = typed.split(",");
    const current = parts.pop()!.trim();
    const before = parts.map((part) => part.trim()).filter(Boolean);
    const found = current ? await context.index.findByName(current, 25) : await context.index.list({ state: "active" }, 23);
    const choices = found.filter((lora) => !before.includes(lora.name)).map((lora) => [...before, lora.name].join(", "));
    if (!current && before.length === 0) choices.unshift("auto", "none");
    return choices.filter((value) => value.length <= 100).slice(0, 25).map((value) => ({ name: value, value }));
  },
};

const loras: ChatCommand = {
  name: "loras",
  description: "Which LoRAs a prompt would use, why, and the nearest others",
  private: true,
  options: [{ name: "search", description: "A prompt or a few words", type: "string", required: true, rest: true, autocomplete: true, maxLength: MAX_PROMPT_CHARS }],
  async run(call, context, reply) {
    const prompt = String(call.options.search);
    const settings = { minSimilarity: context.minSimilarity, selection: context.selection, covering: context.covering, hybrid: context.hybrid };
    const [{ hits: used }, { hits: nearest }] = await Promise.all([
      context.retriever.retrieve(prompt, { k: context.k, ...settings }),
      context.retriever.retrieve(prompt, { k: Math.max(context.k, 5), minSimilarity: -1, hybrid: context.hybrid })]);
    if (nearest.length === 0) return reply.send({ text: "the pool has no LoRAs yet" });
    const chosen = new Set(used.map((hit) => hit.lora.id));
    const line = (hit: RetrievedHit, mark: string) => `${mark} ${hit.lora.name} (${hit.similarity.toFixed(2)}` +
      `${hit.parts ? `: ${describeParts(hit.parts)}` : ""})` +
      `${hit.covers ? ` covers “${hit.covers.part}” (${hit.covers.similarity.toFixed(2)})` : ""} \`${hit.lora.id.slice(0, 12)}\``;
    const lines = [...used.map((hit) => line(hit, "✅")), ...nearest.filter((hit) => !chosen.has(hit.lora.id)).map((hit) => line(hit, "▫️"))];
    await reply.send({ text: `LoRAs for **${prompt}** (✅ = /imagine would use it; similarity to the whole prompt):\n${lines.join("\n")}` });
  },
  async complete(_option, typed, context) {
    if (!typed.trim()) return [];
    const { hits } = await context.retriever.retrieve(typed, { k: 25, minSimilarity: -1 });
    return hits.map((hit) => ({ name: `${hit.lora.name} (${hit.similarity.toFixed(2)})`.slice(0, 100), value: hit.lora.name.slice(0, 100) }));
  },
};

const lora: ChatCommand = {
  name: "lora",
  description: "One LoRA: details, and for admins add, remove, block, unblock",
  private: true,
  subcommands: [
    { name: "info", description: "Everything the pool knows about a LoRA", options: [loraOption("Name or id")] },
    {
      name: "add", description: "Add a LoRA from an https URL or an attached .safetensors file", adminOnly: true,
      options: [
        { name: "url", description: "https URL of a .safetensors file", type: "string", rest: true },
        { name: "file", description: "A .safetensors file", type: "attachment" },
        { name: "name", description: "Name to show (default: the file name)", type: "string", maxLength: 100 },
        { name: "tags", description: "Tags, separated by commas", type: "string", maxLength: 200 },
      ],
    },
    { name: "remove", description: "Delete a LoRA from the pool", adminOnly: true, options: [loraOption("Name or id")] },
    { name: "block", description: "Stop a LoRA from being retrieved", adminOnly: true, options: [loraOption("Name or id")] },
    { name: "unblock", description: "Let a blocked LoRA be retrieved again", adminOnly: true, options: [loraOption("Name or id")] },
  ],
  async run(call, context, reply) {
    if (call.subcommand === "add") {
      const file = call.options.file as Attachment | undefined;
      const url = file?.url ?? (call.options.url as string | undefined);
      if (!url) throw new CommandInputError("give url:https://… or attach a .safetensors file");
      await reply.send({ text: `⏳ downloading and checking ${file?.name ?? url}…` });
      const tags = (call.options.tags as string | undefined)?.split(",").map((tag) => tag.trim()).filter(Boolean);
      // Without a name, the file's: the attachment's, or the last part of the URL (not the download's temporary name).
      const name = (call.options.name as string | undefined) ?? (file?.name ?? fileNameOf(url)).replace(/\.safetensors$/i, "");
      const result = await context.addFromUrl(url, { name, tags, source: `admin ${call.requester.id}`, url: file ? "" : url });
      return reply.send({
        text: `${result.status === "added" ? "✅ added" : "already in the pool"}: **${result.lora.name}** ` +
          `\`${result.lora.id.slice(0, 12)}\` (${result.lora.format}, ${result.lora.family})` +
          (result.note ? `\nℹ️ ${result.note}` : ""),
      });
    }
    const target = await resolveLora(String(call.options.lora), context);
    if (call.subcommand === "info") return reply.send({ text: await loraInfo(target, context) });
    if (call.subcommand === "remove") {
      await context.index.remove(target.id);
      await context.store.remove(target.id);
      return reply.send({ text: `🗑 removed **${target.name}** \`${target.id.slice(0, 12)}\`` });
    }
    const state = call.subcommand === "block" ? "blocked" : "active";
    await context.index.setState(target.id, state);
    await reply.send({ text: `${state === "blocked" ? "⛔ blocked" : "✅ unblocked"} **${target.name}** \`${target.id.slice(0, 12)}\`` });
  },
  async complete(_option, typed, context) {
    const text = typed.trim();
    const found = /^[0-9a-f]{8,64}$/.test(text) ? await context.index.findByPrefix(text, 25)
      : text ? await context.index.findByName(text, 25) : await context.index.list({}, 25);
    return found.map((entry) => ({ name: `${entry.name} (${entry.id.slice(0, 8)})${entry.state === "blocked" ? " ⛔" : ""}`.slice(0, 100), value: entry.id }));
  },
};

const pool: ChatCommand = {
  name: "pool",
  description: "The LoRA pool and the workers (admins)",
  adminOnly: true,
  private: true,
  subcommands: [{ name: "status", description: "Pool size, last crawl, queue depth, worker health and versions", adminOnly: true }],
  async run(_call, context, reply) {
    const status = await context.status();
    const workers = status.workers.map((worker) =>
      `• ${worker.id}: ${worker.state}${worker.model ? ` · ${worker.model}` : ""}${worker.modelVersion ? ` ${worker.modelVersion}` : ""}` +
      `${worker.gateVersion ? ` · gates ${worker.gateVersion}` : ""}${worker.encoderVersion ? ` · encoder ${worker.encoderVersion}` : ""}`).join("\n") || "• none";
    await reply.send({
      text: [
        `**Pool**: ${status.loras} LoRAs (${status.blocked} blocked) · last crawl ${status.lastCrawl ?? "never"}`,
        ...(status.searchable && status.searchable.weights < status.loras ? [searchableLine(status.searchable)] : []),
        `**Queue**: ${status.queue.waiting} waiting, ${status.queue.running} running` + (status.queue.shared
          ? ` here · Redis, all hosts: ${status.queue.shared.waiting} waiting, ${status.queue.shared.running} running` : ""),
        `**Workers**:\n${workers}`,
      ].join("\n"),
    });
  },
};

/** How many LoRAs each embedding finds, when some are not found by their weights. */
function searchableLine({ weights, textOnly, none }: NonNullable<PoolStatus["searchable"]>): string {
  return `**Searchable**: ${weights} by weights, ${textOnly} by text only (no LoRA encoder for their family yet)` +
    (none ? `, ${none} not at all (no encoder and no text: give them a name, tags or trigger words)` : "");
}

const retrain: ChatCommand = {
  name: "retrain",
  description: "Retrain the fusion gates on the current pool (admins)",
  adminOnly: true,
  private: true,
  subcommands: [{ name: "now", description: "Start retraining now instead of at the next scheduled time", adminOnly: true }],
  async run(_call, context, reply) {
    if (!context.retrain) throw new CommandInputError("this host has no gates to retrain (its bundle has none)");
    await reply.send({ text: `🏋️ ${await context.retrain()}` });
  },
};

const help: ChatCommand = {
  name: "help",
  description: "What the bot can do",
  private: true,
  async run(call, context, reply) {
    await reply.send({ text: context.commands.help(call.requester.admin) });
  },
};

export const BUILTIN_COMMANDS: ChatCommand[] = [imagine, loras, lora, pool, retrain, help];

/** `loras:` of /imagine: undefined (retrieve), [] (none) or the ids of the LoRAs named. */
async function chosenLoras(value: string | undefined, context: CommandContext): Promise<string[] | undefined> {
  const text = value?.trim().toLowerCase();
  if (!text || text === "auto") return undefined;
  if (text === "none") return [];
  const names = value!.split(",").map((name) => name.trim()).filter(Boolean);
  if (names.length > MAX_CHAT_LORAS) throw new CommandInputError(`at most ${MAX_CHAT_LORAS} LoRAs at once, not ${names.length}`);
  const ids: string[] = [];
  for (const name of names) {
    const found = await resolveLora(name, context);
    if (found.state !== "active") throw new CommandInputError(`the LoRA ${found.name} is blocked`);
    if (!ids.includes(found.id)) ids.push(found.id);
  }
  return ids;
}

/** A LoRA by id prefix (8+ hex characters) or by name (exact, or the only one containing it). */
async function resolveLora(reference: string, context: CommandContext): Promise<Lora> {
  const text = reference.trim();
  if (/^[0-9a-f]{8,64}$/.test(text)) {
    const matches = await context.index.findByPrefix(text, 2);
    if (matches.length === 1) return matches[0]!;
    if (matches.length > 1) throw new CommandInputError(`${text} matches more than one LoRA; give more of its id`);
  }
  const found = await context.index.findByName(text, 10);
  const exact = found.filter((entry) => entry.name.toLowerCase() === text.toLowerCase());
  if (exact.length === 1) return exact[0]!;
  if (exact.length === 0 && found.length === 1) return found[0]!;
  if (found.length === 0) throw new CommandInputError(`no LoRA called ${text}; try /loras search:${text}`);
  throw new CommandInputError(`"${text}" could be ${found.slice(0, 5).map((entry) => `${entry.name} (${entry.id.slice(0, 8)})`).join(", ")}; give the id`);
}

async function loraInfo(entry: Lora, context: CommandContext): Promise<string> {
  const rating = (await context.generations.ratingsByLora()).find((total) => total.lora === entry.id);
  return [
    `**${entry.name}** \`${entry.id.slice(0, 16)}\`${entry.state === "blocked" ? " ⛔ blocked" : ""}${entry.nsfw ? " 🔞" : ""}`,
    `${entry.family} · ${entry.format} · rank ${entry.ranks.join("/")} · ${entry.modules} modules · ${(entry.bytes / 1e6).toFixed(1)} MB`,
    `source: ${entry.source}${entry.url ? ` (${entry.url})` : ""}${entry.license ? ` · licence ${entry.license}` : ""}`,
    entry.embedding === "text" ? "found by its text only: no LoRA encoder for its family has embedded it yet" : "",
    entry.embedding === "none" ? "not found by any search: no LoRA encoder for its family and no text" : "",
    entry.trigger_words.length ? `trigger words: ${entry.trigger_words.join(", ")}` : "",
    entry.tags.length ? `tags: ${entry.tags.join(", ")}` : "",
    entry.captions.length ? `captions: ${entry.captions.slice(0, 3).map((caption) => `"${caption}"`).join(", ")}` : "",
    `ratings: ${rating ? `${rating.up} 👍 ${rating.down} 👎 (score ${rating.score})` : "none yet"} · added ${entry.added_at}`,
  ].filter(Boolean).join("\n");
}

function fileNameOf(url: string): string {
  try {
    return decodeURIComponent(new URL(url).pathname.split("/").filter(Boolean).at(-1) ?? "") || "unnamed LoRA";
  } catch {
    return "unnamed LoRA";
  }
}

function parseSize(size: string | undefined): { width?: number; height?: number } {
  if (!size) return {};
  const match = /^(\d+)\s*[x×]\s*(\d+)$/i.exec(size.trim());
  const [width, height] = match ? [Number(match[1]), Number(match[2])] : [0, 0];
  const fits = (side: number) => side % SIZE_MULTIPLE === 0 && side >= MIN_SIZE && side <= MAX_SIZE;
  if (!match || !fits(width) || !fits(height)) {
    throw new CommandInputError(`size must be WIDTHxHEIGHT, multiples of ${SIZE_MULTIPLE} from ${MIN_SIZE} to ${MAX_SIZE}, e.g. 1024x768 (got ${size})`);
  }
  return { width, height };
}
