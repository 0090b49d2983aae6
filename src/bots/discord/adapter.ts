// Discord through discord.js: slash commands (registered only when their definitions change — per guild while
// developing, globally for release), buttons, autocomplete and reactions, translated to and from ChatCore.
// Every interaction is deferred before any other work (Discord allows 3 s); answers edit the deferred reply
// within the 15-minute interaction token and fall back to plain channel messages after it.
import { createHash } from "node:crypto";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Agent } from "undici";
import { z } from "zod";
import {
  ActionRowBuilder, ApplicationCommandOptionType, ButtonBuilder, ButtonStyle, Client, Events, GatewayIntentBits, MessageFlags,
  Partials, type ApplicationCommandDataResolvable, type AutocompleteInteraction, type ButtonInteraction,
  type ChatInputCommandInteraction, type CommandInteractionOption, type GuildMember, type Interaction, type Message,
  type MessageReaction, type PartialMessageReaction, type PartialUser, type User,
} from "discord.js";
import type { ChatCommand, OptionSpec, OptionValue, Requester } from "../commands.js";
import type { ChatCore, CommandInput, Conversation, MessageHandle } from "../core.js";
import { imageUnder, parseButtonId, type BotMessage } from "../messages.js";
import type { ChatAdapter, ChatAdapterFactory } from "../../plugins.js";

/** Connections to Discord's REST API; requests beyond them wait for one (Discord's global limit is 50 a second). */
const REST_CONNECTIONS = 32;

export interface DiscordAdapterOptions {
  token: string;
  core: ChatCore;
  /** Where the registered commands' fingerprint is kept, so they are registered once per change. */
  stateDir: string;
  /** Register commands in this guild only (instant; for development). Default: global. */
  guildId?: string;
  /** REST API base, e.g. a local fake's http://127.0.0.1:PORT/api. Default: Discord's. */
  apiUrl?: string;
  /** Largest file to upload; bigger images are re-encoded and downscaled. Default 10 MiB (Discord's limit). */
  uploadLimitBytes?: number;
  /** How long an interaction token lasts. Default 15 minutes (Discord's), less a minute of margin. */
  tokenLifetimeMs?: number;
  log?: (line: string) => void;
}

/** What a BotMessage becomes: the same shape serves create, edit and follow-up calls. */
interface DiscordPayload {
  content: string;
  files: Array<{ attachment: Buffer; name: string }>;
  components: Array<ActionRowBuilder<ButtonBuilder>>;
}

/** Discord error codes meaning the interaction token can no longer be used. */
const TOKEN_GONE = new Set([10015, 10062, 50027]);
const MAX_CONTENT = 2000;
const discordAddress = z.strictObject({ channel: z.string().regex(/^\d{1,24}$/), message: z.string().regex(/^\d{1,24}$/) });

export class DiscordAdapter implements ChatAdapter {
  readonly name = "discord";
  readonly client: Client;
  private readonly log: (line: string) => void;
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly restAgent = new Agent({ connections: REST_CONNECTIONS });

  constructor(private readonly options: DiscordAdapterOptions) {
    this.log = options.log ?? (() => undefined);
    this.client = new Client({
      // Reactions only: the bot reads no messages, and with GuildMessages it would be sent (and would parse and
      // cache) every message of every channel it can see, its own included, on the loop that acknowledges commands.
      intents: [GatewayIntentBits.Guilds, GatewayIntentBits.GuildMessageReactions, GatewayIntentBits.DirectMessageReactions],
      // Reactions on messages sent before this process started arrive only as partials.
      partials: [Partials.Message, Partials.Channel, Partials.Reaction, Partials.User],
      // A few kept-alive connections rather than one per request: a burst of commands made ~200 callbacks at once,
      // each opening its own connection (a TLS handshake against Discord) on the loop that sends the next
      // acknowledgement. Discord takes 50 requests a second from a bot in all, so more connections never help.
      rest: { ...(options.apiUrl ? { api: options.apiUrl } : {}), agent: this.restAgent },
    });
    this.client.on(Events.InteractionCreate, (interaction) => this.track(this.interaction(interaction)));
    this.client.on(Events.MessageReactionAdd, (reaction, user) => this.track(this.reaction(reaction, user, false)));
    this.client.on(Events.MessageReactionRemove, (reaction, user) => this.track(this.reaction(reaction, user, true)));
    this.client.on(Events.Error, (error) => this.log(`[discord] ${error.message}`));
  }

  async start(): Promise<{ applicationId: string; registered: boolean }> {
    const ready = new Promise<void>((resolve) => this.client.once(Events.ClientReady, () => resolve()));
    await this.client.login(this.options.token);
    await ready;
    const registered = await this.registerCommands();
    this.log(`[discord] logged in as ${this.client.user?.tag}; commands ${registered ? "registered" : "unchanged"}` +
      ` (${this.options.guildId ? `guild ${this.options.guildId}` : "global"})`);
    return { applicationId: this.client.application!.id, registered };
  }

  async stop(): Promise<void> {
    await Promise.allSettled([...this.inFlight]);
    await this.client.destroy();
    await this.restAgent.close();
  }

  /** The slash-command definitions Discord gets for the core's commands. */
  definitions(): ApplicationCommandDataResolvable[] {
    return this.options.core.commands().map((command) => commandDefinition(command));
  }

  /** Register the commands if their definitions (or scope) changed since the last registration. */
  async registerCommands(): Promise<boolean> {
    const definitions = this.definitions();
    const scope = this.options.guildId ? `guild:${this.options.guildId}` : "global";
    const applicationId = this.client.application!.id;
    const fingerprint = createHash("sha256").update(JSON.stringify({ definitions, scope, applicationId })).digest("hex");
    const file = join(this.options.stateDir, "discord-commands.json");
    const previous = await readFile(file, "utf8").then((text) => JSON.parse(text) as { fingerprint?: string }, () => ({} as { fingerprint?: string }));
    if (previous.fingerprint === fingerprint) return false;
    await this.client.application!.commands.set(definitions, ...(this.options.guildId ? [this.options.guildId] : []) as []);
    await mkdir(this.options.stateDir, { recursive: true });
    await writeFile(`${file}.tmp`, JSON.stringify({ fingerprint, scope, applicationId, at: new Date().toISOString() }));
    await rename(`${file}.tmp`, file);
    return true;
  }

  private track(work: Promise<unknown>): void {
    const tracked = work.catch((error: unknown) => this.log(`[discord] ${error instanceof Error ? error.stack ?? error.message : String(error)}`))
      .finally(() => this.inFlight.delete(tracked));
    this.inFlight.add(tracked);
  }

  private requester(interaction: Interaction): Requester {
    const member = interaction.member as GuildMember | { roles?: string[] } | null;
    const roles = Array.isArray(member?.roles) ? member.roles : member && "roles" in member && member.roles && "cache" in member.roles
      ? [...member.roles.cache.keys()] : [];
    return this.options.core.requester({ adapter: "discord", userId: interaction.user.id, name: interaction.user.username, roles });
  }

  private async interaction(interaction: Interaction): Promise<void> {
    if (interaction.isChatInputCommand()) return this.command(interaction);
    if (interaction.isButton()) return this.button(interaction);
    if (interaction.isAutocomplete()) return this.autocomplete(interaction);
  }

  private async command(interaction: ChatInputCommandInteraction): Promise<void> {
    // Acknowledge first: everything else may take longer than Discord's 3 seconds.
    const ephemeral = this.options.core.isPrivate(interaction.commandName);
    await interaction.deferReply(ephemeral ? { flags: MessageFlags.Ephemeral } : {});
    const input = commandInput(interaction);
    await this.options.core.handle(input, this.requester(interaction), this.conversation(interaction, ephemeral));
  }

  private async button(interaction: ButtonInteraction): Promise<void> {
    const action = parseButtonId(interaction.customId)?.action;
    const ephemeral = action === undefined || action === "info" || action === "rate" || action === "delete";
    await interaction.deferReply(ephemeral ? { flags: MessageFlags.Ephemeral } : {});
    const source = interaction.message;
    const conversation = this.conversation(interaction, ephemeral);
    conversation.removeSource = async () => {
      await source.delete();
    };
    await this.options.core.press(interaction.customId, this.requester(interaction), conversation);
  }

  private async autocomplete(interaction: AutocompleteInteraction): Promise<void> {
    const focused = interaction.options.getFocused(true);
    const choices = await this.options.core.complete({
      command: interaction.commandName, subcommand: interaction.options.getSubcommand(false) ?? undefined,
      option: focused.name, typed: String(focused.value),
    }, this.requester(interaction));
    await interaction.respond(choices.map((choice) => ({ name: choice.name.slice(0, 100) || "?", value: choice.value.slice(0, 100) })));
  }

  private async reaction(reaction: MessageReaction | PartialMessageReaction, user: User | PartialUser, removed: boolean): Promise<void> {
    if (user.bot || user.id === this.client.user?.id) return;
    const emoji = reaction.emoji.name;
    if (!emoji) return;
    const requester = this.options.core.requester({ adapter: "discord", userId: user.id, name: user.username ?? user.id });
    const outcome = await this.options.core.react(`discord:${reaction.message.id}`, requester, emoji, removed);
    if (outcome !== "ignored") this.log(`[discord] ${requester.id} ${outcome} ${reaction.message.id} with ${emoji}`);
  }

  /**
   * Answers to one interaction: the first edits the deferred reply, later ones are follow-ups. Once the token is
   * too old (or Discord says it is gone) answers and edits go to the channel as ordinary messages instead.
   */
  private conversation(interaction: ChatInputCommandInteraction | ButtonInteraction, deferredEphemeral: boolean): Conversation {
    const expires = interaction.createdTimestamp + (this.options.tokenLifetimeMs ?? 14 * 60_000);
    let answered = false;
    const channelMessage = async (message: BotMessage): Promise<Message> => {
      const channel = interaction.channel ?? await this.client.channels.fetch(interaction.channelId);
      if (!channel?.isSendable()) throw new Error(`cannot post in channel ${interaction.channelId}`);
      return channel.send(await this.payload(message));
    };
    const viaToken = async <T>(work: () => Promise<T>, fallback: () => Promise<T>): Promise<T> => {
      if (Date.now() >= expires) return fallback();
      try {
        return await work();
      } catch (error) {
        if (!TOKEN_GONE.has((error as { code?: number }).code ?? 0)) throw error;
        this.log(`[discord] the interaction token of ${interaction.id} is gone; answering in the channel`);
        return fallback();
      }
    };
    const handle = (posted: Message, viaWebhook: boolean): MessageHandle => {
      let current = posted;
      let webhook = viaWebhook;
      return {
        key: `discord:${posted.id}`,
        ...(posted.flags.has(MessageFlags.Ephemeral) ? {} : { address: { channel: posted.channelId, message: posted.id } }),
        edit: async (message) => {
          const payload = await this.payload(message);
          if (webhook) {
            current = await viaToken(() => interaction.webhook.editMessage(current.id, payload), async () => {
              webhook = false;
              return channelEdit(current, payload, message);
            });
          } else current = await channelEdit(current, payload, message);
        },
      };
    };
    const channelEdit = async (posted: Message, payload: DiscordPayload, message: BotMessage): Promise<Message> => {
      try {
        const channel = posted.channel ?? await this.client.channels.fetch(posted.channelId);
        if (channel && "messages" in channel) return await channel.messages.edit(posted.id, payload);
      } catch (error) {
        this.log(`[discord] could not edit message ${posted.id}: ${error instanceof Error ? error.message : String(error)}; posting anew`);
      }
      return channelMessage(message);
    };
    return {
      answer: async (message) => {
        const payload = await this.payload(message);
        if (!answered) {
          answered = true;
          // A refusal on a public deferral: replace it by a message only the user sees.
          if (message.ephemeral && !deferredEphemeral) {
            const sent = await viaToken(async () => {
              await interaction.deleteReply();
              return interaction.followUp({ ...payload, flags: MessageFlags.Ephemeral });
            }, () => channelMessage(message));
            return handle(sent, true);
          }
          const sent = await viaToken(() => interaction.editReply(payload), () => channelMessage(message));
          return handle(sent, Date.now() < expires);
        }
        const flags = message.ephemeral ? { flags: MessageFlags.Ephemeral as const } : {};
        const sent = await viaToken(() => interaction.followUp({ ...payload, ...flags }), () => channelMessage(message));
        return handle(sent, Date.now() < expires);
      },
    };
  }

  /**
   * A message posted before a restart ({ channel, message }), edited in its channel with the bot token (the
   * interaction's token is not kept: it would let anyone who reads the data folder answer as the bot); posted anew
   * if Discord no longer lets it be edited.
   */
  reopen(address: unknown): MessageHandle | undefined {
    const parsed = discordAddress.safeParse(address);
    if (!parsed.success) return undefined;
    const { channel: channelId } = parsed.data;
    let messageId = parsed.data.message;
    const handle: MessageHandle = {
      key: `discord:${messageId}`, address: parsed.data,
      edit: async (message) => {
        const payload = await this.payload(message);
        const channel = await this.client.channels.fetch(channelId);
        if (!channel?.isSendable() || !("messages" in channel)) throw new Error(`cannot post in channel ${channelId}`);
        try {
          await channel.messages.edit(messageId, payload);
        } catch (error) {
          this.log(`[discord] could not edit message ${messageId}: ${error instanceof Error ? error.message : String(error)}; posting anew`);
          messageId = (await channel.send(payload)).id;
          Object.assign(handle, { key: `discord:${messageId}`, address: { channel: channelId, message: messageId } });
        }
      },
    };
    return handle;
  }

  /** A BotMessage as a Discord message: content, at most one file under the upload limit, button rows. */
  private async payload(message: BotMessage): Promise<DiscordPayload> {
    const content = message.text.length > MAX_CONTENT ? `${message.text.slice(0, MAX_CONTENT - 1)}…` : message.text;
    const files = message.image ? [await imageUnder(message.image, this.options.uploadLimitBytes ?? 10 * 1024 * 1024)] : [];
    const components = (message.buttons ?? []).slice(0, 5).map((row) => new ActionRowBuilder<ButtonBuilder>().addComponents(
      row.slice(0, 5).map((button) => new ButtonBuilder().setCustomId(button.id).setLabel(button.label)
        .setStyle(button.style === "danger" ? ButtonStyle.Danger : button.style === "primary" ? ButtonStyle.Primary : ButtonStyle.Secondary))));
    return { content, files: files.map((file) => ({ attachment: file.data, name: file.name })), components };
  }
}

/** A core command as Discord's slash-command JSON (subcommands as options of type 1). */
export function commandDefinition(command: ChatCommand): ApplicationCommandDataResolvable {
  const option = (spec: OptionSpec) => ({
    name: spec.name, description: spec.description.slice(0, 100), required: spec.required ?? false,
    type: spec.type === "integer" ? ApplicationCommandOptionType.Integer
      : spec.type === "attachment" ? ApplicationCommandOptionType.Attachment : ApplicationCommandOptionType.String,
    ...(spec.choices ? { choices: spec.choices.map((choice) => ({ name: choice, value: choice })) } : {}),
    ...(spec.autocomplete && !spec.choices ? { autocomplete: true } : {}),
    ...(spec.min !== undefined ? { min_value: spec.min } : {}),
    ...(spec.max !== undefined ? { max_value: spec.max } : {}),
    ...(spec.maxLength !== undefined ? { max_length: spec.maxLength } : {}),
  });
  // Discord wants required options before optional ones.
  const ordered = (specs: OptionSpec[] = []) => [...specs].sort((a, b) => Number(b.required ?? false) - Number(a.required ?? false)).map(option);
  return {
    name: command.name, description: command.description,
    options: command.subcommands
      ? command.subcommands.map((sub) => ({ type: ApplicationCommandOptionType.Subcommand, name: sub.name, description: sub.description, options: ordered(sub.options) }))
      : ordered(command.options),
  } as ApplicationCommandDataResolvable;
}

function commandInput(interaction: ChatInputCommandInteraction): CommandInput {
  let subcommand: string | undefined;
  let given: readonly CommandInteractionOption[] = interaction.options.data;
  const first = given[0];
  if (first?.type === ApplicationCommandOptionType.Subcommand) {
    subcommand = first.name;
    given = first.options ?? [];
  }
  const options: Record<string, OptionValue> = {};
  for (const option of given) {
    if (option.attachment) options[option.name] = { name: option.attachment.name, url: option.attachment.url, size: option.attachment.size };
    else if (option.value !== undefined && option.value !== null) options[option.name] = option.value as string | number;
  }
  return { command: interaction.commandName, subcommand, options };
}

export const discordAdapterFactory: ChatAdapterFactory = {
  name: "discord",
  create: ({ config, core, secrets, dataDir, log }) => {
    const token = secrets.get("discordToken");
    if (!token) return undefined;
    return new DiscordAdapter({
      token, core, stateDir: dataDir, guildId: config.discord.guild_id || undefined, apiUrl: config.discord.api_url || undefined,
      uploadLimitBytes: Math.floor(config.discord.upload_limit_mb * 1024 * 1024), log,
    });
  },
};
