// The conversation engine every chat adapter shares. An adapter turns its platform's events into calls here —
// a command (`handle`, or `handleText` for typed lines), a button press (`press`), a reaction (`react`), an
// autocomplete (`complete`) — and gives a `Conversation` that posts and edits messages. Everything else —
// who is an admin, rate limits, option checks, the /imagine flow, buttons and ratings — happens once, here.
import { join } from "node:path";
import { QueueFullError } from "../pipeline/queue.js";
import { isRefusal } from "../pool/refusal.js";
import {
  CommandInputError, optionsOf, parseCommandText, validateOptions,
  type ChatCommand, type CommandContext, type OptionValue, type Reply, type Requester,
} from "./commands.js";
import type { JournalEntry } from "../pipeline/journal.js";
import { imagineInChat, infoText, resultMessage } from "./imagine-flow.js";
import { parseButtonId, type BotMessage } from "./messages.js";
import { RateLimiter } from "./limits.js";

/** A posted message the bot can still change. */
export interface MessageHandle {
  /** The chat's id for it ("<adapter>:<id>"), so reactions on it can be traced back; undefined if it has none. */
  key?: string;
  /** Where it is, as JSON its adapter's `reopen` takes after a restart; absent where it cannot be reopened
   *  (a message only one user sees). */
  address?: unknown;
  edit(message: BotMessage): Promise<void>;
}

/** Where one command's or button's answers go. */
export interface Conversation {
  /** Post a message in answer: the first call uses the platform's acknowledgement, later ones are follow-ups. */
  answer(message: BotMessage): Promise<MessageHandle>;
  /** Delete the message a button was pressed on. */
  removeSource?(): Promise<void>;
}

export interface CommandInput {
  command: string;
  subcommand?: string;
  options: Record<string, OptionValue>;
}

export interface Identity {
  adapter: string;
  userId: string;
  name: string;
  /** Platform roles (Discord role ids), for role-based admins. */
  roles?: string[];
}

export type ReactionOutcome = "rated" | "unrated" | "ignored";

/**
 * Work that follows an acknowledgement waits while acknowledgements are still being made: a command or button
 * enters the core right after its platform acknowledgement, and its work starts once no other has entered for
 * QUIET_MS (at most HOLD_MS later). In a burst every request is acknowledged before any of them embeds a prompt,
 * searches the pool or posts progress; a lone request waits QUIET_MS.
 */
export class AcknowledgementsFirst {
  private last = -Infinity;
  private readonly waiting: Array<{ entered: number; go: () => void }> = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly quietMs = 20, private readonly holdMs = 1000) {}

  turn(): Promise<void> {
    const entered = performance.now();
    this.last = entered;
    return new Promise((go) => {
      this.waiting.push({ entered, go });
      this.timer ??= setTimeout(() => this.release(), this.quietMs);
    });
  }

  /** One timer for all waiters: everyone goes once it is quiet, the longest-held ones at the cap regardless. */
  private release(): void {
    this.timer = undefined;
    const now = performance.now();
    const quiet = now - this.last >= this.quietMs;
    while (this.waiting.length > 0 && (quiet || now - this.waiting[0]!.entered >= this.holdMs)) this.waiting.shift()!.go();
    if (this.waiting.length > 0) {
      const untilQuiet = this.last + this.quietMs - now;
      const untilCap = this.waiting[0]!.entered + this.holdMs - now;
      this.timer = setTimeout(() => this.release(), Math.max(1, Math.min(untilQuiet, untilCap)));
    }
  }
}

export class ChatCore {
  private readonly limiter: RateLimiter;
  private readonly acknowledgements = new AcknowledgementsFirst();

  constructor(readonly context: CommandContext, private readonly log: (line: string) => void = () => undefined) {
    this.limiter = new RateLimiter({
      perMinute: context.chat.perMinute, perDay: context.chat.perDay,
      countToday: (user, since) => context.generations.countSince(user, since),
    });
  }

  requester(identity: Identity): Requester {
    const admins = this.context.chat.admins;
    const admin = admins.includes(`${identity.adapter}:${identity.userId}`)
      || (identity.roles ?? []).some((role) => admins.includes(`${identity.adapter}:role:${role}`));
    return { id: `${identity.adapter}:${identity.userId}`, name: identity.name, admin };
  }

  commands(): ChatCommand[] {
    return this.context.commands.all();
  }

  /** Whether a command answers only the person who asked (adapters decide how to acknowledge by it). */
  isPrivate(command: string): boolean {
    return this.context.commands.get(command)?.private === true;
  }

  /** Run a typed line (web chat, Slack). */
  async handleText(line: string, requester: Requester, conversation: Conversation, signal?: AbortSignal): Promise<void> {
    let input: CommandInput;
    try {
      const parsed = parseCommandText(line, this.context.commands);
      input = { command: parsed.command.name, subcommand: parsed.subcommand, options: parsed.options };
    } catch (error) {
      return void await this.refuse(conversation, error);
    }
    await this.handle(input, requester, conversation, signal);
  }

  /** Run a command with its options (Discord gives them typed; `handleText` parses them). */
  async handle(input: CommandInput, requester: Requester, conversation: Conversation, signal?: AbortSignal): Promise<void> {
    await this.acknowledgements.turn();
    const command = this.context.commands.get(input.command);
    if (!command) return void await this.refuse(conversation, new CommandInputError(`unknown command /${input.command}; try /help`));
    const sub = command.subcommands?.find((entry) => entry.name === input.subcommand);
    if (command.subcommands && !sub) {
      return void await this.refuse(conversation, new CommandInputError(`/${command.name} needs one of: ${command.subcommands.map((entry) => entry.name).join(", ")}`));
    }
    const label = `/${command.name}${sub ? ` ${sub.name}` : ""}`;
    if ((command.adminOnly || sub?.adminOnly) && !requester.admin) {
      this.log(`[chat] refused ${label} to ${requester.id} (not an admin)`);
      return void await conversation.answer({ text: `Sorry, ${label} is for the bot's admins only. Nothing was changed.`, ephemeral: true, error: true });
    }
    const reply = this.reply(conversation, command.private === true);
    let counted = false;
    try {
      const options = validateOptions(optionsOf(command, input.subcommand), input.options, label);
      if (command.name === "imagine") {
        await this.limiter.take(requester);
        counted = true;
      }
      await command.run({ command: command.name, subcommand: input.subcommand, options, requester, signal }, this.context, reply);
    } catch (error) {
      // Nothing was made: a refused job does not count against the user's limits.
      if (counted && (error instanceof QueueFullError || error instanceof CommandInputError)) this.limiter.refund(requester);
      await this.fail(reply, error, label);
    }
  }

  /** A button of ours was pressed (its id says what on). */
  async press(customId: string, requester: Requester, conversation: Conversation, signal?: AbortSignal): Promise<void> {
    await this.acknowledgements.turn();
    const button = parseButtonId(customId);
    if (!button) return void await conversation.answer({ text: "That button is not one of mine.", ephemeral: true, error: true });
    const generation = await this.context.generations.get(button.generation);
    if (!generation) return void await conversation.answer({ text: "That image is gone; /imagine again.", ephemeral: true, error: true });
    const reply = this.reply(conversation);
    const index = Number(button.argument ?? 0) - 1;
    const label = `the ${button.action} button`;
    try {
      switch (button.action) {
        case "upscale": {
          if (!(index >= 0 && index < generation.seeds.length)) throw new CommandInputError("no such image in that grid");
          return await reply.send({
            text: `**${generation.prompt}** · image ${index + 1} · seed ${generation.seeds[index]}`,
            image: { name: `${index + 1}.png`, path: join(this.context.dataDir, generation.images, `${index + 1}.png`) },
          });
        }
        case "vary":
        case "reroll": {
          if (button.action === "vary" && !(index >= 0 && index < generation.seeds.length)) throw new CommandInputError("no such image in that grid");
          await this.limiter.take(requester);
          // Variations: the same LoRAs, seeds next to the chosen image's (past the grid's own seeds).
          const seeds = button.action === "vary"
            ? generation.seeds.map((_, offset) => generation.seeds[index]! + generation.seeds.length + offset)
            : undefined;
          return void await imagineInChat({
            prompt: generation.prompt, user: requester.id, loras: generation.loras.map((lora) => lora.id),
            fusion: generation.fusion as never, seeds, width: generation.width, height: generation.height, signal,
            title: button.action === "vary" ? `Variation of image ${index + 1}` : "Reroll",
          }, this.context, reply, this.context.chat);
        }
        case "info":
          return await reply.send({ text: infoText(generation), ephemeral: true });
        case "delete": {
          if (generation.user !== requester.id && !requester.admin) {
            return await reply.send({ text: "Only the person who asked for it (or an admin) can delete it.", ephemeral: true, error: true });
          }
          await conversation.removeSource?.();
          this.log(`[chat] ${requester.id} deleted the post of ${generation.id}`);
          return await reply.send({ text: "🗑 deleted", ephemeral: true });
        }
        case "rate": {
          const value = Number(button.argument);
          const emoji = Object.entries(this.context.chat.reactions).find(([, rating]) => rating === value)?.[0];
          if (!emoji) throw new CommandInputError("that rating is no longer offered");
          await this.context.generations.rate(generation.id, requester.id, value);
          return await reply.send({ text: `${emoji} rated ${value > 0 ? "+" : ""}${value} (your rating replaces any earlier one)`, ephemeral: true });
        }
      }
    } catch (error) {
      await this.fail(reply, error, label);
    }
  }

  /** A reaction was added to (or removed from) message `key`; rates the generation it shows. */
  async react(key: string, requester: Requester, emoji: string, removed = false): Promise<ReactionOutcome> {
    const value = this.context.chat.reactions[emoji];
    if (value === undefined) return "ignored";
    const generation = await this.context.generations.postedGeneration(key);
    if (!generation) return "ignored";
    if (removed) return (await this.context.generations.unrate(generation, requester.id, value)) ? "unrated" : "ignored";
    return (await this.context.generations.rate(generation, requester.id, value)) ? "rated" : "ignored";
  }

  /** Suggestions for an option being typed (at most 25). */
  async complete(input: { command: string; subcommand?: string; option: string; typed: string }, requester: Requester): Promise<Array<{ name: string; value: string }>> {
    const command = this.context.commands.get(input.command);
    if (!command?.complete || (command.adminOnly && !requester.admin)) return [];
    try {
      return (await command.complete(input.option, input.typed.slice(0, 200), this.context)).slice(0, 25);
    } catch (error) {
      this.log(`[chat] autocomplete of /${input.command} ${input.option} failed: ${error instanceof Error ? error.message : String(error)}`);
      return [];
    }
  }

  /**
   * A Reply on a conversation: the first send opens a message, later sends edit it; follow-ups open new ones.
   * A private command's messages are all ephemeral.
   */
  private reply(conversation: Conversation, private_ = false, opened?: MessageHandle): Reply {
    let handle: MessageHandle | undefined = opened;
    const link = async (posted: MessageHandle, message: BotMessage) => {
      if (message.generation && posted.key) await this.context.generations.linkPost(posted.key, message.generation);
    };
    const shown = (message: BotMessage) => private_ ? { ...message, ephemeral: true } : message;
    return {
      send: async (given) => {
        const message = shown(given);
        if (!handle) {
          handle = await conversation.answer(message);
          return link(handle, message);
        }
        // Link before editing where the message keeps its key, so no reaction on the result can come first.
        const before = handle.key;
        if (before) await link(handle, message);
        await handle.edit(message);
        if (handle.key !== before) await link(handle, message);
      },
      followUp: async (given) => {
        const message = shown(given);
        await link(await conversation.answer(message), message);
      },
      address: () => handle?.address,
    };
  }

  /**
   * Answer a job accepted before the host restarted, on its acknowledgement reopened by its adapter: post its grid
   * if it was made meanwhile, or run it again under its id (the queue hands back its result if it kept one).
   */
  async resume(entry: JournalEntry, handle: MessageHandle): Promise<void> {
    const journal = this.context.journal;
    const conversation: Conversation = { answer: () => Promise.reject(new Error("a job taken up again answers only on its own message")) };
    const reply = this.reply(conversation, false, handle);
    const made = await this.context.generations.get(entry.id);
    try {
      if (made) {
        await reply.send(resultMessage(made, made.loras, join(this.context.dataDir, made.images, "grid.webp"), this.context.chat.reactions, entry.title));
        await journal?.finish(entry.id);
        return;
      }
      await imagineInChat({
        id: entry.id, prompt: entry.prompt, user: entry.user, seeds: entry.seeds, loras: entry.loras, k: entry.k,
        fusion: entry.fusion as never, width: entry.width, height: entry.height, title: entry.title, resumed: true,
      }, this.context, reply, this.context.chat);
    } catch (error) {
      if ((error as { shown?: boolean }).shown) return;
      // Refused before it was queued (the queue is full, the prompt no longer allowed): say so where it was asked.
      // Where even that cannot be posted, it stays journaled for the next start.
      const reason = error instanceof Error ? error.message : String(error);
      this.log(`[chat] job ${entry.id} could not be taken up again: ${reason}`);
      try {
        await reply.send({ text: `**${entry.prompt}**\n❌ this could not be taken up again after the bot restarted: ${reason}. Please ask again.`, error: true });
        await journal?.finish(entry.id);
      } catch (sendError) {
        this.log(`[chat] could not tell the user of job ${entry.id} either: ${sendError instanceof Error ? sendError.message : String(sendError)}`);
      }
    }
  }

  private async refuse(conversation: Conversation, error: unknown): Promise<void> {
    await conversation.answer({ text: error instanceof Error ? error.message : String(error), ephemeral: true, error: true });
  }

  private async fail(reply: Reply, error: unknown, label: string): Promise<void> {
    const expected = error instanceof CommandInputError || error instanceof QueueFullError || (error as { code?: string }).code === "rate-limited";
    // A refused URL or file is the user's to fix: one line; a stack trace only for what we did not expect.
    if (isRefusal(error)) this.log(`[chat] ${label} refused: ${error.code}: ${error.message}`);
    else if (!expected) this.log(`[chat] ${label} failed: ${error instanceof Error ? error.stack ?? error.message : String(error)}`);
    // imagineInChat already showed its own failure on its message.
    if ((error as { shown?: boolean }).shown) return;
    const text = error instanceof Error ? error.message : String(error);
    await reply.send({ text: expected ? text : `❌ ${label} failed: ${text}`, ephemeral: true, error: true }).catch((sendError: unknown) =>
      this.log(`[chat] could not tell the user that ${label} failed: ${sendError instanceof Error ? sendError.message : String(sendError)}`));
  }
}
