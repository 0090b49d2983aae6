// The fake Discord's side of the wire format: the objects it hands a bot (users, members, the guild and its channel,
// the application, messages, interactions and gateway events), filled in the way Discord fills them and typed by
// discord.js's own API types, so a field discord.js relies on cannot go missing; the request bodies it accepts; and
// its error answers. fake-discord-guild.ts holds the state these objects describe.
import {
  ApplicationCommandType, ApplicationFlags, ApplicationIntegrationType, ChannelType, ComponentType, GuildDefaultMessageNotifications,
  GuildExplicitContentFilter, GuildMFALevel, GuildNSFWLevel, GuildPremiumTier, GuildSystemChannelFlags, GuildVerificationLevel,
  InteractionContextType, InteractionResponseType, InteractionType, Locale, PermissionFlagsBits, ReactionType, RESTJSONErrorCodes,
  type APIApplication, type APIApplicationCommandAutocompleteGuildInteraction,
  type APIApplicationCommandInteractionDataOption, type APIAttachment, type APIChatInputApplicationCommandGuildInteraction,
  type APIEmbed, type APIGuildInteractionWrapper, type APIGuildTextChannel, type APIInteractionGuildMember, type APIMessage,
  type APIMessageComponentButtonInteraction, type APIMessageTopLevelComponent, type APIRole, type APIUser,
  type GatewayGuildCreateDispatchData, type GatewayGuildMembersChunkDispatchData, type GatewayMessageReactionAddDispatchData,
  type GatewayMessageReactionRemoveDispatchData, type GatewayReadyDispatchData,
} from "discord.js";
import { z } from "zod";
import type { StoredMessage } from "./fake-discord-guild.js";

/** What every member (and the bot) may do in the guild's channel. */
export const EVERYONE_PERMISSIONS = (PermissionFlagsBits.ViewChannel | PermissionFlagsBits.SendMessages |
  PermissionFlagsBits.EmbedLinks | PermissionFlagsBits.AttachFiles | PermissionFlagsBits.ReadMessageHistory |
  PermissionFlagsBits.AddReactions | PermissionFlagsBits.UseApplicationCommands).toString();
export const NO_FLAGS: number = 0;
/** An unboosted guild's upload limit. */
const ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024;
/** A bot without the privileged message-content intent approved, the usual case. */
const APPLICATION_FLAGS = ApplicationFlags.GatewayMessageContentLimited;
const DISCORD_EPOCH = 1_420_070_400_000n;

/** Snowflakes from the clock, strictly increasing, so discord.js can read creation times from them. */
export class Snowflakes {
  private last = 0n;

  next(): string {
    const now = (BigInt(Date.now()) - DISCORD_EPOCH) << 22n;
    this.last = now > this.last ? now : this.last + 1n;
    return this.last.toString();
  }
}

/** Who the fake is: the application, its bot user, and the one guild with its one text channel. */
export interface FakeDiscordIdentity {
  applicationId: string;
  botUserId: string;
  guildId: string;
  channelId: string;
}

/** What every interaction payload has in common; `member` is the user who acted. */
export interface InteractionStart {
  id: string;
  token: string;
  member: APIInteractionGuildMember;
}

/** The chat-input command an interaction invokes: its registered id, and its guild for a guild command. */
export interface InteractionCommand {
  id: string;
  name: string;
  guildId?: string;
}

export class DiscordPayloads {
  readonly botUser: APIUser;

  constructor(
    private readonly identity: FakeDiscordIdentity,
    /** Where attachment urls point: the fake's own CDN route. */
    private readonly attachmentBaseUrl: string,
  ) {
    this.botUser = { id: identity.botUserId, username: "fake-bot", global_name: null, discriminator: "0", avatar: null, bot: true };
  }

  /** @everyone (whose id is the guild's id, as on Discord) and then `extra`, which grant nothing of their own. */
  roles(extra: Array<{ id: string; name: string }>): APIRole[] {
    return [{ id: this.identity.guildId, name: "@everyone", permissions: EVERYONE_PERMISSIONS }, ...extra.map((role) => ({ ...role, permissions: "0" }))]
      .map((role, position) => ({ ...role, position, color: 0, colors: { primary_color: 0, secondary_color: null, tertiary_color: null }, hoist: false, managed: false, mentionable: false, flags: NO_FLAGS }));
  }

  member(user: APIUser, roles: string[], joinedAt: string): APIInteractionGuildMember {
    return {
      user, roles, permissions: EVERYONE_PERMISSIONS, joined_at: joinedAt,
      nick: null, avatar: null, premium_since: null, pending: false, communication_disabled_until: null,
      deaf: false, mute: false, flags: NO_FLAGS,
    };
  }

  botMember(): APIInteractionGuildMember {
    return this.member(this.botUser, [], new Date(0).toISOString());
  }

  textChannel(): APIGuildTextChannel<ChannelType.GuildText> {
    return {
      id: this.identity.channelId, type: ChannelType.GuildText, guild_id: this.identity.guildId, name: "general", position: 0,
      permission_overwrites: [], nsfw: false, parent_id: null, topic: null, last_message_id: null, rate_limit_per_user: 0,
      flags: NO_FLAGS,
    };
  }

  guild(roles: APIRole[], members: APIInteractionGuildMember[]): GatewayGuildCreateDispatchData {
    return {
      id: this.identity.guildId, name: "Fake Guild", icon: null, splash: null, discovery_splash: null, banner: null, description: null,
      owner_id: this.identity.botUserId, afk_channel_id: null, afk_timeout: 300, application_id: null,
      verification_level: GuildVerificationLevel.None,
      default_message_notifications: GuildDefaultMessageNotifications.OnlyMentions,
      explicit_content_filter: GuildExplicitContentFilter.Disabled,
      mfa_level: GuildMFALevel.None, nsfw_level: GuildNSFWLevel.Default, premium_tier: GuildPremiumTier.None,
      system_channel_id: null, system_channel_flags: GuildSystemChannelFlags.SuppressJoinNotifications,
      rules_channel_id: null, public_updates_channel_id: null, safety_alerts_channel_id: null,
      vanity_url_code: null, preferred_locale: Locale.EnglishUS, premium_progress_bar_enabled: false,
      hub_type: null, incidents_data: null, features: [], emojis: [], stickers: [], roles,
      joined_at: new Date(0).toISOString(), large: false, unavailable: false, member_count: members.length,
      members, channels: [this.textChannel()], threads: [], presences: [], voice_states: [],
      stage_instances: [], guild_scheduled_events: [], soundboard_sounds: [],
    };
  }

  application(): APIApplication {
    return {
      id: this.identity.applicationId, name: this.botUser.username, icon: null, description: "", summary: "",
      bot_public: false, bot_require_code_grant: false, verify_key: "0".repeat(64), team: null,
      flags: APPLICATION_FLAGS,
      flags_new: APPLICATION_FLAGS.toString(),
    };
  }

  message(message: StoredMessage): APIMessage {
    return {
      id: message.id,
      channel_id: message.channel_id,
      author: this.botUser,
      content: message.content,
      timestamp: message.timestamp,
      edited_timestamp: message.edited_timestamp,
      tts: false,
      mention_everyone: false,
      mentions: [],
      mention_roles: [],
      attachments: message.attachments.map((attachment): APIAttachment => {
        const url = `${this.attachmentBaseUrl}/${message.channel_id}/${attachment.id}/${encodeURIComponent(attachment.filename)}`;
        return { id: attachment.id, filename: attachment.filename, size: attachment.size, url, proxy_url: url, content_type: attachment.content_type };
      }),
      // Echoed as the bot sent them; Discord normalizes a little (adds embed type "rich"), discord.js needs none of it.
      embeds: message.embeds as APIEmbed[],
      components: message.components as APIMessageTopLevelComponent[],
      pinned: false,
      type: message.type,
      flags: message.flags,
      ...(message.interaction_metadata && {
        webhook_id: this.identity.applicationId,
        application_id: this.identity.applicationId,
        interaction_metadata: message.interaction_metadata,
      }),
      ...(message.message_reference && { message_reference: message.message_reference }),
    };
  }

  /** Who installed the application: the guild, as for every guild-installed bot. */
  integrationOwners() {
    return { [ApplicationIntegrationType.GuildInstall]: this.identity.guildId };
  }

  /** The data of a chat-input command, as Discord sends it: with the id (and guild) the command was registered with. */
  private commandData({ id, name, guildId }: InteractionCommand) {
    return { id, name, type: ApplicationCommandType.ChatInput as const, ...(guildId !== undefined && { guild_id: guildId }) };
  }

  private interactionBase({ id, token, member }: InteractionStart) {
    return {
      id,
      token,
      application_id: this.identity.applicationId,
      version: 1 as const,
      guild_id: this.identity.guildId,
      guild: { id: this.identity.guildId, locale: Locale.EnglishUS, features: [] },
      channel_id: this.identity.channelId,
      channel: this.textChannel(),
      member,
      app_permissions: EVERYONE_PERMISSIONS,
      locale: Locale.EnglishUS,
      guild_locale: Locale.EnglishUS,
      entitlements: [],
      authorizing_integration_owners: this.integrationOwners(),
      context: InteractionContextType.Guild,
      attachment_size_limit: ATTACHMENT_SIZE_LIMIT,
    };
  }

  slashCommand(start: InteractionStart, command: InteractionCommand, options: unknown[] | undefined): APIChatInputApplicationCommandGuildInteraction {
    return {
      ...this.interactionBase(start),
      type: InteractionType.ApplicationCommand,
      data: { ...this.commandData(command), options: options as APIApplicationCommandInteractionDataOption[] | undefined },
    };
  }

  autocomplete(start: InteractionStart, command: InteractionCommand, options: unknown[]): APIApplicationCommandAutocompleteGuildInteraction {
    return {
      ...this.interactionBase(start),
      type: InteractionType.ApplicationCommandAutocomplete,
      data: { ...this.commandData(command), options: options as APIApplicationCommandInteractionDataOption[] },
    };
  }

  button(start: InteractionStart, message: StoredMessage, customId: string): APIGuildInteractionWrapper<APIMessageComponentButtonInteraction> {
    return {
      ...this.interactionBase(start),
      type: InteractionType.MessageComponent,
      message: this.message(message),
      data: { custom_id: customId, component_type: ComponentType.Button },
    };
  }

  /** MESSAGE_REACTION_REMOVE's data, which MESSAGE_REACTION_ADD extends. */
  reactionRemoval(input: { messageId: string; channelId: string; userId: string; emoji: string }): GatewayMessageReactionRemoveDispatchData {
    return {
      type: ReactionType.Normal,
      user_id: input.userId,
      channel_id: input.channelId,
      message_id: input.messageId,
      guild_id: this.identity.guildId,
      emoji: { id: null, name: input.emoji },
      burst: false,
    };
  }

  /** `onKnownMessage`: the message is one the fake holds, so Discord names its author (the bot). */
  reactionAddition(
    removal: GatewayMessageReactionRemoveDispatchData,
    member: APIInteractionGuildMember,
    onKnownMessage: boolean,
  ): GatewayMessageReactionAddDispatchData {
    return {
      ...removal,
      member,
      burst_colors: [],
      ...(onKnownMessage && { message_author_id: this.identity.botUserId }),
    };
  }

  ready(sessionId: string, gatewayUrl: string): GatewayReadyDispatchData {
    return {
      v: 10,
      user: this.botUser,
      guilds: [{ id: this.identity.guildId, unavailable: true }],
      session_id: sessionId,
      resume_gateway_url: gatewayUrl,
      shard: [0, 1],
      application: { id: this.identity.applicationId, flags: APPLICATION_FLAGS, flags_new: APPLICATION_FLAGS.toString() },
    };
  }

  /** All the members asked for, in one chunk; `wanted` (asked for by id) names the ids not found. */
  membersChunk(found: APIInteractionGuildMember[], wanted: string[] | undefined, nonce: string | undefined): GatewayGuildMembersChunkDispatchData {
    return {
      guild_id: this.identity.guildId,
      members: found,
      chunk_index: 0,
      chunk_count: 1,
      ...(wanted && { not_found: wanted.filter((id) => !found.some((member) => member.user.id === id)) }),
      ...(nonce !== undefined && { nonce }),
    };
  }
}

// --- what a bot sends, and Discord's error answers ---------------------------------------------------------------

/** A Discord error answer: its HTTP status and the JSON body { code, message } Discord sends with it. */
export class DiscordApiError extends Error {
  constructor(readonly status: number, readonly code: number, message: string, readonly errors?: unknown) {
    super(message);
  }
}

const ERRORS = {
  notFound: [404, RESTJSONErrorCodes.GeneralError, "404: Not Found"],
  unknownApplication: [404, RESTJSONErrorCodes.UnknownApplication, "Unknown Application"],
  unknownChannel: [404, RESTJSONErrorCodes.UnknownChannel, "Unknown Channel"],
  unknownMessage: [404, RESTJSONErrorCodes.UnknownMessage, "Unknown Message"],
  unknownWebhook: [404, RESTJSONErrorCodes.UnknownWebhook, "Unknown Webhook"],
  unknownInteraction: [404, RESTJSONErrorCodes.UnknownInteraction, "Unknown interaction"],
  alreadyAcknowledged: [400, RESTJSONErrorCodes.InteractionHasAlreadyBeenAcknowledged, "Interaction has already been acknowledged."],
  missingAccess: [403, RESTJSONErrorCodes.MissingAccess, "Missing Access"],
  emptyMessage: [400, RESTJSONErrorCodes.CannotSendAnEmptyMessage, "Cannot send an empty message"],
  invalidWebhookToken: [401, RESTJSONErrorCodes.InvalidWebhookToken, "Invalid Webhook Token"],
  invalidJson: [400, RESTJSONErrorCodes.RequestBodyContainsInvalidJSON, "The request body contains invalid JSON."],
} as const;

export function apiError(name: keyof typeof ERRORS): DiscordApiError {
  const [status, code, message] = ERRORS[name];
  return new DiscordApiError(status, code, message);
}

export function invalidFormBody(errors: unknown): DiscordApiError {
  return new DiscordApiError(400, RESTJSONErrorCodes.InvalidFormBodyOrContentType, "Invalid Form Body", errors);
}

/** The body as `schema` reads it, or Discord's 400 Invalid Form Body with what is wrong. */
export function parseBody<Schema extends z.ZodType>(schema: Schema, value: unknown): z.infer<Schema> {
  const result = schema.safeParse(value);
  if (!result.success) throw invalidFormBody(result.error.issues);
  return result.data;
}

/** The message fields a bot sends (create and edit); discord.js numbers new attachments "0", "1"… after files[N]. */
export const messageBody = z.looseObject({
  content: z.string().nullish(),
  embeds: z.array(z.unknown()).nullish(),
  components: z.array(z.unknown()).nullish(),
  attachments: z.array(z.looseObject({ id: z.union([z.string(), z.number()]).transform(String), filename: z.string().optional() })).nullish(),
  flags: z.number().int().nullish(),
  message_reference: z.looseObject({ message_id: z.string().optional() }).nullish(),
});
export type MessageBody = z.infer<typeof messageBody>;

export const callbackBody = z.object({ type: z.enum(InteractionResponseType), data: z.unknown().optional() });

export const commandsBody = z.array(z.looseObject({
  name: z.string().min(1),
  description: z.string().default(""),
  type: z.enum(ApplicationCommandType).default(ApplicationCommandType.ChatInput),
  default_member_permissions: z.string().nullish(),
}));
