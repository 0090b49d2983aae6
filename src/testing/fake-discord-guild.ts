// The state of the fake Discord's one guild (messages with their uploaded bytes, interactions and their tokens,
// members, registered commands) and the operations that read and change it by Discord's rules, answering with
// Discord's errors. fake-discord.ts puts this behind REST routes; what changes is told to the gateway.
import { randomBytes } from "node:crypto";
import {
  ApplicationCommandType, GatewayDispatchEvents, GatewayIntentBits, InteractionResponseType, InteractionType, MessageFlags,
  MessageType,
  type APIApplicationCommand, type APIGuildTextChannel, type APIInteractionGuildMember, type APIMessageInteractionMetadata,
  type APIMessageReference, type APIRole, type APIUser, type ChannelType, type RESTPostAPIInteractionCallbackWithResponseResult,
} from "discord.js";
import {
  apiError, callbackBody, commandsBody, invalidFormBody, messageBody, NO_FLAGS, parseBody, type DiscordPayloads, type FakeDiscordIdentity,
  type InteractionCommand, type InteractionStart, type MessageBody, type Snowflakes,
} from "./fake-discord-payloads.js";

export interface FakeMessage {
  id: string;
  channel_id: string;
  content: string;
  embeds: unknown[];
  components: unknown[];
  attachments: Array<{ id: string; filename: string; size: number; content_type?: string; data: Buffer }>;
  flags: number;
  /** The token of the interaction whose response or follow-up this message is. */
  interaction_token?: string;
  deleted?: boolean;
  edits: number;
}

export interface InteractionUser {
  userId: string;
  /** Default: "user<last 4 digits of the id>", or the name the user had last time. */
  username?: string;
  /** Role ids, each one of FakeDiscordOptions.roles. */
  roles?: string[];
}

/** A file part of a multipart request: its form field ("files[0]"…), file name, type and bytes. */
export interface UploadedFile {
  field: string;
  name: string;
  contentType: string;
  data: Buffer;
}

/** A message as the fake keeps it: what tests read (FakeMessage) and what the API shows of it besides. */
export interface StoredMessage extends FakeMessage {
  type: MessageType;
  timestamp: string;
  edited_timestamp: string | null;
  interaction_metadata?: APIMessageInteractionMetadata;
  message_reference?: APIMessageReference;
}

interface InteractionState {
  id: string;
  token: string;
  type: InteractionType;
  user: APIUser;
  /** For a component interaction: the message the component is on, which "@original" then means. */
  componentMessageId?: string;
  originalMessageId?: string;
  acknowledged: boolean;
  expired: boolean;
}

/** Sends a gateway dispatch to every identified client, or with `intent` only to those that asked for it. */
export type Broadcast = (type: string, data: unknown, intent?: GatewayIntentBits) => void;

/** Discord refuses a message with nothing in it. */
function requireSomething(body: MessageBody, files: UploadedFile[]): void {
  const empty = !body.content && !body.embeds?.length && !body.components?.length && files.length === 0;
  if (empty) throw apiError("emptyMessage");
}

export class FakeDiscordGuild {
  /** Messages created through any route (interaction responses, webhook follow-ups, channel messages), by id. */
  readonly messages = new Map<string, StoredMessage>();
  readonly commands = { global: [] as APIApplicationCommand[], guild: new Map<string, APIApplicationCommand[]>() };
  readonly roles: APIRole[];
  private readonly interactions = new Map<string, InteractionState>();
  private readonly members = new Map<string, APIInteractionGuildMember>();

  constructor(
    private readonly identity: FakeDiscordIdentity,
    private readonly payloads: DiscordPayloads,
    private readonly snowflakes: Snowflakes,
    private readonly broadcast: Broadcast,
    roles: Array<{ id: string; name: string }>,
  ) {
    this.roles = payloads.roles(roles);
  }

  /** The bot first, then every user who has acted in the guild. */
  allMembers(): APIInteractionGuildMember[] {
    return [this.payloads.botMember(), ...this.members.values()];
  }

  // --- interactions and reactions, as users make them -----------------------------------------------------------

  slashCommand(input: InteractionUser & { name: string; options?: unknown[] }): { id: string; token: string } {
    const start = this.beginInteraction(InteractionType.ApplicationCommand, input);
    this.broadcast(GatewayDispatchEvents.InteractionCreate, this.payloads.slashCommand(start, this.command(input.name), input.options));
    return { id: start.id, token: start.token };
  }

  button(input: InteractionUser & { customId: string; messageId: string }): { id: string; token: string } {
    const message = this.messages.get(input.messageId);
    if (!message) throw new Error(`button on message ${input.messageId}, which this fake Discord never created`);
    const start = this.beginInteraction(InteractionType.MessageComponent, input, message.id);
    this.broadcast(GatewayDispatchEvents.InteractionCreate, this.payloads.button(start, message, input.customId));
    return { id: start.id, token: start.token };
  }

  autocomplete(input: InteractionUser & { name: string; options: unknown[] }): { id: string; token: string } {
    const start = this.beginInteraction(InteractionType.ApplicationCommandAutocomplete, input);
    this.broadcast(GatewayDispatchEvents.InteractionCreate, this.payloads.autocomplete(start, this.command(input.name), input.options));
    return { id: start.id, token: start.token };
  }

  react(input: { messageId: string; userId: string; emoji: string; remove?: boolean }): void {
    const message = this.messages.get(input.messageId);
    const removal = this.payloads.reactionRemoval({ ...input, channelId: message?.channel_id ?? this.identity.channelId });
    if (input.remove) return this.broadcast(GatewayDispatchEvents.MessageReactionRemove, removal, GatewayIntentBits.GuildMessageReactions);
    const member = input.userId === this.identity.botUserId ? this.payloads.botMember() : this.memberFor({ userId: input.userId });
    const addition = this.payloads.reactionAddition(removal, member, message !== undefined);
    this.broadcast(GatewayDispatchEvents.MessageReactionAdd, addition, GatewayIntentBits.GuildMessageReactions);
  }

  expireToken(token: string): void {
    const interaction = this.interactions.get(token);
    if (!interaction) throw new Error(`expireToken: no interaction has the token ${token}`);
    interaction.expired = true;
  }

  private beginInteraction(type: InteractionType, input: InteractionUser, componentMessageId?: string): InteractionStart {
    const id = this.snowflakes.next();
    // Shaped like Discord's: base64 of "interaction:<id>:<secret>", safe in a URL path as it is.
    const token = Buffer.from(`interaction:${id}:${randomBytes(48).toString("base64url")}`).toString("base64url");
    const member = this.memberFor(input);
    this.interactions.set(token, { id, token, type, user: member.user, componentMessageId, acknowledged: false, expired: false });
    return { id, token, member };
  }

  /** The command's registered id, guild commands first, as Discord sends it; a fresh id for unregistered names. */
  private command(name: string): InteractionCommand {
    const registered = [...(this.commands.guild.get(this.identity.guildId) ?? []), ...this.commands.global]
      .find((candidate) => candidate.name === name && candidate.type === ApplicationCommandType.ChatInput);
    return { id: registered?.id ?? this.snowflakes.next(), name, guildId: registered?.guild_id };
  }

  private memberFor({ userId, username, roles }: InteractionUser): APIInteractionGuildMember {
    const unknownRole = roles?.find((role) => !this.roles.some((known) => known.id === role));
    if (unknownRole !== undefined) {
      throw new Error(`role ${unknownRole} is not one of the guild's roles (${this.roles.map((role) => role.id).join(", ")}); list it in startFakeDiscord({ roles })`);
    }
    const previous = this.members.get(userId);
    const name = username ?? previous?.user.username ?? `user${userId.slice(-4)}`;
    const user: APIUser = { id: userId, username: name, global_name: name, discriminator: "0", avatar: null };
    const member = this.payloads.member(user, roles ?? previous?.roles ?? [], previous?.joined_at ?? new Date().toISOString());
    this.members.set(userId, member);
    return member;
  }

  // --- what the bot does, through REST -------------------------------------------------------------------------

  /** The guild's one text channel; any other id is unknown. */
  channel(channelId: string): APIGuildTextChannel<ChannelType.GuildText> {
    if (channelId !== this.identity.channelId) throw apiError("unknownChannel");
    return this.payloads.textChannel();
  }

  /** The answer to an interaction; with `withResponse`, the body Discord returns for ?with_response=true. */
  interactionCallback(
    id: string,
    token: string,
    request: { body: unknown; files: UploadedFile[]; withResponse: boolean },
  ): RESTPostAPIInteractionCallbackWithResponseResult | undefined {
    const interaction = this.interactions.get(token);
    // Discord forgets an interaction 3 s after it arrived unanswered; the fake's stand-in for that is expireToken.
    if (!interaction || interaction.id !== id || interaction.expired) throw apiError("unknownInteraction");
    if (interaction.acknowledged) throw apiError("alreadyAcknowledged");
    const { type, data } = parseBody(callbackBody, request.body);
    let message: StoredMessage | undefined;
    switch (type) {
      case InteractionResponseType.ChannelMessageWithSource: {
        const body = parseBody(messageBody, data ?? {});
        requireSomething(body, request.files);
        message = this.createInteractionMessage(interaction, body, request.files, NO_FLAGS);
        interaction.originalMessageId = message.id;
        break;
      }
      case InteractionResponseType.DeferredChannelMessageWithSource:
        // Discord shows "<bot> is thinking…": a message flagged Loading that the first edit fills in.
        message = this.createInteractionMessage(interaction, parseBody(messageBody, data ?? {}), [], MessageFlags.Loading);
        interaction.originalMessageId = message.id;
        break;
      case InteractionResponseType.DeferredMessageUpdate:
      case InteractionResponseType.UpdateMessage: {
        if (interaction.componentMessageId === undefined) throw invalidFormBody(`response type ${type} is only for component interactions`);
        interaction.originalMessageId = interaction.componentMessageId;
        message = this.liveMessage(interaction.componentMessageId);
        if (type === InteractionResponseType.UpdateMessage) this.applyEdit(message, parseBody(messageBody, data ?? {}), request.files);
        break;
      }
      case InteractionResponseType.ApplicationCommandAutocompleteResult:
        if (interaction.type !== InteractionType.ApplicationCommandAutocomplete) throw invalidFormBody("autocomplete results answer only autocomplete interactions");
        break;
      case InteractionResponseType.Modal:
        break;
      default:
        throw invalidFormBody(`the fake Discord does not take interaction response type ${type}`);
    }
    interaction.acknowledged = true;
    if (!request.withResponse) return undefined;
    return {
      interaction: {
        id: interaction.id,
        type: interaction.type,
        ...(message && {
          response_message_id: message.id,
          response_message_loading: (message.flags & MessageFlags.Loading) !== 0,
          response_message_ephemeral: (message.flags & MessageFlags.Ephemeral) !== 0,
        }),
      },
      resource: { type, ...(message && { message: this.payloads.message(message) }) },
    };
  }

  /** A follow-up message through the interaction's webhook. */
  followUp(app: string, token: string, body: unknown, files: UploadedFile[]): StoredMessage {
    const interaction = this.webhookInteraction(app, token);
    const parsed = parseBody(messageBody, body);
    requireSomething(parsed, files);
    return this.createInteractionMessage(interaction, parsed, files, NO_FLAGS);
  }

  /** A message of the interaction's webhook: "@original" (its response) or the id of one of its follow-ups. */
  webhookMessage(app: string, token: string, messageId: string): StoredMessage {
    const interaction = this.webhookInteraction(app, token);
    const id = messageId === "@original" ? interaction.originalMessageId : messageId;
    const message = id === undefined ? undefined : this.messages.get(id);
    const belongs = message && (message.id === interaction.originalMessageId || message.interaction_token === interaction.token);
    if (!message || message.deleted || !belongs) throw apiError("unknownMessage");
    return message;
  }

  channelMessage(channelId: string, messageId: string): StoredMessage {
    this.channel(channelId);
    const message = this.messages.get(messageId);
    if (!message || message.deleted || message.channel_id !== channelId) throw apiError("unknownMessage");
    return message;
  }

  createChannelMessage(channelId: string, body: unknown, files: UploadedFile[]): StoredMessage {
    this.channel(channelId);
    const parsed = parseBody(messageBody, body);
    requireSomething(parsed, files);
    const reference = parsed.message_reference?.message_id ? { ...parsed.message_reference, channel_id: channelId, guild_id: this.identity.guildId } : undefined;
    const message = this.newMessage(channelId, reference ? MessageType.Reply : MessageType.Default, parsed.flags ?? NO_FLAGS);
    if (reference) message.message_reference = reference;
    return this.publish(message, parsed, files);
  }

  editMessage(message: StoredMessage, body: unknown, files: UploadedFile[]): StoredMessage {
    this.applyEdit(message, parseBody(messageBody, body), files);
    return message;
  }

  deleteMessage(message: StoredMessage): void {
    message.deleted = true;
    this.announce(message, GatewayDispatchEvents.MessageDelete, { id: message.id, channel_id: message.channel_id });
  }

  /** An attachment's bytes and type, for the fake's CDN. */
  attachment(channelId: string, attachmentId: string): FakeMessage["attachments"][number] | undefined {
    return [...this.messages.values()]
      .filter((message) => message.channel_id === channelId)
      .flatMap((message) => message.attachments)
      .find((candidate) => candidate.id === attachmentId);
  }

  commandList(app: string, guildId?: string): APIApplicationCommand[] {
    if (app !== this.identity.applicationId) throw apiError("unknownApplication");
    if (guildId === undefined) return this.commands.global;
    if (guildId !== this.identity.guildId) throw apiError("missingAccess");
    return this.commands.guild.get(guildId) ?? [];
  }

  /** Bulk overwrite; a command keeps its id when one of the same name and type was registered before, as on Discord. */
  overwriteCommands(app: string, guildId: string | undefined, body: unknown): APIApplicationCommand[] {
    const previous = this.commandList(app, guildId);
    const registered = parseBody(commandsBody, body).map((command): APIApplicationCommand => ({
      ...command,
      id: previous.find((old) => old.name === command.name && old.type === command.type)?.id ?? this.snowflakes.next(),
      application_id: this.identity.applicationId,
      version: this.snowflakes.next(),
      default_member_permissions: command.default_member_permissions ?? null,
      ...(guildId !== undefined && { guild_id: guildId }),
    }));
    if (guildId === undefined) this.commands.global = registered;
    else this.commands.guild.set(guildId, registered);
    return registered;
  }

  private webhookInteraction(app: string, token: string): InteractionState {
    const interaction = this.interactions.get(token);
    if (app !== this.identity.applicationId || !interaction) throw apiError("unknownWebhook");
    if (interaction.expired) throw apiError("invalidWebhookToken");
    // The webhook exists only once the interaction has been answered.
    if (!interaction.acknowledged) throw apiError("unknownWebhook");
    return interaction;
  }

  private liveMessage(id: string): StoredMessage {
    const message = this.messages.get(id);
    if (!message || message.deleted) throw apiError("unknownMessage");
    return message;
  }

  private createInteractionMessage(interaction: InteractionState, body: MessageBody, files: UploadedFile[], extraFlags: number): StoredMessage {
    const type = interaction.type === InteractionType.ApplicationCommand ? MessageType.ChatInputCommand : MessageType.Default;
    const message = this.newMessage(this.identity.channelId, type, (body.flags ?? NO_FLAGS) | extraFlags);
    message.interaction_token = interaction.token;
    const common = { id: interaction.id, user: interaction.user, authorizing_integration_owners: this.payloads.integrationOwners() };
    const followUpOf = interaction.originalMessageId === undefined ? {} : { original_response_message_id: interaction.originalMessageId };
    message.interaction_metadata = interaction.componentMessageId === undefined
      ? { ...common, ...followUpOf, type: InteractionType.ApplicationCommand }
      : { ...common, ...followUpOf, type: InteractionType.MessageComponent, interacted_message_id: interaction.componentMessageId };
    return this.publish(message, body, files);
  }

  private newMessage(channelId: string, type: MessageType, flags: number): StoredMessage {
    return {
      id: this.snowflakes.next(), channel_id: channelId, type, flags, content: "", embeds: [], components: [], attachments: [],
      timestamp: new Date().toISOString(), edited_timestamp: null, edits: 0,
    };
  }

  /** Fills in a new message, stores it and tells the gateway, as Discord does. */
  private publish(message: StoredMessage, body: MessageBody, files: UploadedFile[]): StoredMessage {
    this.applyBody(message, body, files);
    this.messages.set(message.id, message);
    this.announce(message, GatewayDispatchEvents.MessageCreate, this.payloads.message(message));
    return message;
  }

  private applyEdit(message: StoredMessage, body: MessageBody, files: UploadedFile[]): void {
    this.applyBody(message, body, files);
    if (body.flags != null) message.flags = body.flags | (message.flags & MessageFlags.Ephemeral);
    message.flags &= ~MessageFlags.Loading;
    message.edits += 1;
    message.edited_timestamp = new Date().toISOString();
    this.announce(message, GatewayDispatchEvents.MessageUpdate, this.payloads.message(message));
  }

  /** A message event, to the clients that asked for guild messages; Discord sends none for an ephemeral message. */
  private announce(message: StoredMessage, type: GatewayDispatchEvents, data: object): void {
    if (message.flags & MessageFlags.Ephemeral) return;
    this.broadcast(type, { ...data, guild_id: this.identity.guildId }, GatewayIntentBits.GuildMessages);
  }

  /** Discord's rules: fields left out stay; `attachments`, when given, lists the old attachments to keep, and every
   *  uploaded file becomes a new one, named as its attachments entry (id = the N of files[N]) says. */
  private applyBody(message: StoredMessage, body: MessageBody, files: UploadedFile[]): void {
    if (body.content !== undefined) message.content = body.content ?? "";
    if (body.embeds !== undefined) message.embeds = body.embeds ?? [];
    if (body.components !== undefined) message.components = body.components ?? [];
    const listed = body.attachments ?? undefined;
    const kept = listed === undefined ? message.attachments : message.attachments.filter((old) => listed.some((entry) => entry.id === old.id));
    const added = files.map((file) => {
      const index = /^files\[(\d+)\]$/.exec(file.field)?.[1];
      const entry = listed?.find((candidate) => candidate.id === index);
      return {
        id: this.snowflakes.next(), filename: entry?.filename ?? file.name, size: file.data.length, data: file.data,
        ...(file.contentType && { content_type: file.contentType }),
      };
    });
    message.attachments = [...kept, ...added];
  }
}
