// A local Discord for tests and the benchmark: the REST API under /api/v10 and the gateway WebSocket on one port,
// faithful enough that an unmodified discord.js Client logs in, receives interactions and reactions and answers
// them. Every REST call is recorded, and messages keep the bytes of their attachments.
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";
import {
  ApplicationCommandType, ApplicationFlags, ApplicationIntegrationType, ChannelType, ComponentType, GatewayDispatchEvents,
  GatewayIntentBits, GatewayOpcodes, GuildDefaultMessageNotifications, GuildExplicitContentFilter, GuildMFALevel,
  GuildNSFWLevel, GuildPremiumTier, GuildSystemChannelFlags, GuildVerificationLevel, InteractionContextType,
  InteractionResponseType, InteractionType, Locale, MessageFlags, MessageType, PermissionFlagsBits, ReactionType,
  RESTJSONErrorCodes,
  type APIApplication, type APIApplicationCommand, type APIApplicationCommandAutocompleteGuildInteraction,
  type APIApplicationCommandInteractionDataOption, type APIAttachment, type APIChatInputApplicationCommandGuildInteraction,
  type APIEmbed, type APIGuildInteractionWrapper, type APIGuildTextChannel, type APIInteractionGuildMember, type APIMessage,
  type APIMessageComponentButtonInteraction, type APIMessageInteractionMetadata, type APIMessageReference,
  type APIMessageTopLevelComponent, type APIRole, type APIUser, type GatewayGuildCreateDispatchData,
  type GatewayGuildMembersChunkDispatchData, type GatewayMessageReactionAddDispatchData,
  type GatewayMessageReactionRemoveDispatchData, type GatewayReadyDispatchData, type RESTGetAPIGatewayBotResult,
  type RESTPostAPIInteractionCallbackWithResponseResult,
} from "discord.js";
import { WebSocketServer, type RawData, type WebSocket } from "ws";
import { z } from "zod";

export interface FakeDiscordOptions {
  /** Snowflake ids (17-19 digits, as @discordjs/rest buckets routes by them). Default: fresh ones. */
  applicationId?: string;
  botUserId?: string;
  guildId?: string;
  /** The guild's one text channel. */
  channelId?: string;
  /** Extra guild roles, besides @everyone, that interaction users may hold. Default: none. */
  roles?: Array<{ id: string; name: string }>;
}

export interface RecordedRequest {
  method: string;
  /** Decoded, without the "/api/v10" prefix and the query, e.g. "/webhooks/123/tok/messages/@original". */
  path: string;
  query: Record<string, string>;
  /** The parsed JSON body, or for multipart: the parsed payload_json. */
  body: unknown;
  files: Array<{ field: string; name: string; contentType: string; data: Buffer }>;
  /** performance.now() when the request arrived. */
  at: number;
}

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

export interface FakeDiscord {
  /** Give this to discord.js: new Client({ rest: { api: fake.apiUrl } }). */
  apiUrl: string;
  applicationId: string;
  botUserId: string;
  guildId: string;
  channelId: string;
  requests: RecordedRequest[];
  /** Messages created through any route (interaction responses, webhook follow-ups, channel messages), by id. */
  messages: Map<string, FakeMessage>;
  /** Registered application commands, as returned to the bot (with ids). */
  commands: { global: APIApplicationCommand[]; guild: Map<string, APIApplicationCommand[]> };
  /** Resolves once a client has identified and READY and GUILD_CREATE were sent to it. */
  ready(): Promise<void>;
  /** The first request, already received or still to come, that matches. Default timeout: 5 s. */
  waitForRequest(predicate: (request: RecordedRequest) => boolean, timeoutMs?: number): Promise<RecordedRequest>;
  /** Sends a gateway dispatch (op 0) to every identified client. */
  dispatch(type: string, data: unknown): void;
  /** INTERACTION_CREATE for a chat-input command; `options` as Discord sends them ([{ name, type, value }], or
   *  subcommands with nested options). */
  slashCommand(input: InteractionUser & { name: string; options?: unknown[] }): { id: string; token: string };
  /** INTERACTION_CREATE for a button on a message this fake holds. */
  button(input: InteractionUser & { customId: string; messageId: string }): { id: string; token: string };
  /** INTERACTION_CREATE for autocomplete; one option should carry `focused: true`. */
  autocomplete(input: InteractionUser & { name: string; options: unknown[] }): { id: string; token: string };
  /** MESSAGE_REACTION_ADD (or _REMOVE) of a unicode emoji, on any message id, known here or not. */
  react(input: { messageId: string; userId: string; emoji: string; remove?: boolean }): void;
  /** From now on the interaction's webhook routes answer 401 Invalid Webhook Token and its callback 404, as Discord
   *  does once a token's 15 minutes (or a callback's 3 seconds) are over. */
  expireToken(token: string): void;
  close(): Promise<void>;
}

export async function startFakeDiscord(options: FakeDiscordOptions = {}): Promise<FakeDiscord> {
  const { applicationId, botUserId, guildId, channelId, roles = [] } = options;
  const ids = [["applicationId", applicationId], ["botUserId", botUserId], ["guildId", guildId], ["channelId", channelId],
    ...roles.map((role) => [`role ${role.name}`, role.id])];
  for (const [name, id] of ids) {
    if (id !== undefined && !SNOWFLAKE.test(id)) throw new Error(`${name} ${JSON.stringify(id)} is not a snowflake (17-19 digits)`);
  }
  const http = createServer();
  await new Promise<void>((resolve, reject) => {
    http.once("error", reject);
    http.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = http.address() as AddressInfo;
  return new FakeDiscordServer(http, `127.0.0.1:${port}`, options);
}

const SNOWFLAKE = /^\d{17,19}$/;
const API_PREFIX = "/api/v10";
const DISCORD_EPOCH = 1_420_070_400_000n;
/** Discord's value; discord.js waits a random part of it before its first heartbeat. */
const HEARTBEAT_INTERVAL_MS = 41_250;
/** An unboosted guild's upload limit. */
const ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024;
const EVERYONE_PERMISSIONS = (PermissionFlagsBits.ViewChannel | PermissionFlagsBits.SendMessages |
  PermissionFlagsBits.EmbedLinks | PermissionFlagsBits.AttachFiles | PermissionFlagsBits.ReadMessageHistory |
  PermissionFlagsBits.AddReactions | PermissionFlagsBits.UseApplicationCommands).toString();
const NO_FLAGS: number = 0;
/** A bot without the privileged message-content intent approved, the usual case. */
const APPLICATION_FLAGS = ApplicationFlags.GatewayMessageContentLimited;

/** A Discord error answer: its HTTP status and the JSON body { code, message } Discord sends with it. */
class DiscordApiError extends Error {
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

function apiError(name: keyof typeof ERRORS): DiscordApiError {
  const [status, code, message] = ERRORS[name];
  return new DiscordApiError(status, code, message);
}

function invalidFormBody(errors: unknown): DiscordApiError {
  return new DiscordApiError(400, RESTJSONErrorCodes.InvalidFormBodyOrContentType, "Invalid Form Body", errors);
}

function parse<Schema extends z.ZodType>(schema: Schema, value: unknown): z.infer<Schema> {
  const result = schema.safeParse(value);
  if (!result.success) throw invalidFormBody(result.error.issues);
  return result.data;
}

/** The message fields a bot sends (create and edit); discord.js numbers new attachments "0", "1"… after files[N]. */
const messageBody = z.looseObject({
  content: z.string().nullish(),
  embeds: z.array(z.unknown()).nullish(),
  components: z.array(z.unknown()).nullish(),
  attachments: z.array(z.looseObject({ id: z.union([z.string(), z.number()]).transform(String), filename: z.string().optional() })).nullish(),
  flags: z.number().int().nullish(),
  message_reference: z.looseObject({ message_id: z.string().optional() }).nullish(),
});
type MessageBody = z.infer<typeof messageBody>;

const callbackBody = z.object({ type: z.enum(InteractionResponseType), data: z.unknown().optional() });

const commandsBody = z.array(z.looseObject({
  name: z.string().min(1),
  description: z.string().default(""),
  type: z.enum(ApplicationCommandType).default(ApplicationCommandType.ChatInput),
  default_member_permissions: z.string().nullish(),
}));

const gatewayPayload = z.object({ op: z.number().int(), d: z.unknown() });
const identifyData = z.looseObject({ token: z.string().min(1), intents: z.number().int() });
const requestMembersData = z.looseObject({
  guild_id: z.string(),
  query: z.string().optional(),
  limit: z.number().int().default(0),
  user_ids: z.union([z.string(), z.array(z.string())]).optional(),
  nonce: z.string().optional(),
});

interface Reply {
  status: number;
  body?: unknown;
}

interface Route {
  method: string;
  pattern: RegExp;
  handle: (params: Record<string, string>, request: RecordedRequest) => Reply;
}

interface StoredMessage extends FakeMessage {
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

interface GatewaySession {
  socket: WebSocket;
  sequence: number;
  /** null until the client identifies. */
  intents: number | null;
}

interface RequestWaiter {
  predicate: (request: RecordedRequest) => boolean;
  resolve: (request: RecordedRequest) => void;
  reject: (error: Error) => void;
}

const ok = (body: unknown): Reply => ({ status: 200, body });
const NO_CONTENT: Reply = { status: 204 };

class FakeDiscordServer implements FakeDiscord {
  readonly apiUrl: string;
  readonly applicationId: string;
  readonly botUserId: string;
  readonly guildId: string;
  readonly channelId: string;
  readonly requests: RecordedRequest[] = [];
  readonly messages: Map<string, FakeMessage>;
  readonly commands = { global: [] as APIApplicationCommand[], guild: new Map<string, APIApplicationCommand[]>() };

  private readonly gatewayUrl: string;
  private readonly attachmentBaseUrl: string;
  private readonly gateway: WebSocketServer;
  private readonly sessions = new Set<GatewaySession>();
  private readonly stored = new Map<string, StoredMessage>();
  private readonly interactions = new Map<string, InteractionState>();
  private readonly members = new Map<string, APIInteractionGuildMember>();
  private readonly roles: APIRole[];
  private readonly botUser: APIUser;
  private readonly waiters = new Set<RequestWaiter>();
  private readonly routes: Route[];
  private readonly identified: Promise<void>;
  private markIdentified!: () => void;
  private lastId = 0n;

  constructor(private readonly http: Server, host: string, options: FakeDiscordOptions) {
    this.apiUrl = `http://${host}/api`;
    this.gatewayUrl = `ws://${host}`;
    this.attachmentBaseUrl = `http://${host}/attachments`;
    this.applicationId = options.applicationId ?? this.nextId();
    this.botUserId = options.botUserId ?? this.applicationId;
    this.guildId = options.guildId ?? this.nextId();
    this.channelId = options.channelId ?? this.nextId();
    this.messages = this.stored;
    this.botUser = { id: this.botUserId, username: "fake-bot", global_name: null, discriminator: "0", avatar: null, bot: true };
    // @everyone's id is the guild's id, as on Discord.
    this.roles = [{ id: this.guildId, name: "@everyone", permissions: EVERYONE_PERMISSIONS }, ...(options.roles ?? []).map((role) => ({ ...role, permissions: "0" }))]
      .map((role, position) => ({ ...role, position, color: 0, colors: { primary_color: 0, secondary_color: null, tertiary_color: null }, hoist: false, managed: false, mentionable: false, flags: NO_FLAGS }));
    this.identified = new Promise((resolve) => { this.markIdentified = resolve; });
    this.routes = this.buildRoutes();
    http.on("request", (request, response) => this.onRequest(request, response).catch(() => response.destroy()));
    this.gateway = new WebSocketServer({ server: http });
    this.gateway.on("connection", (socket, request) => this.onGatewayConnection(socket, request));
  }

  ready(): Promise<void> {
    return this.identified;
  }

  waitForRequest(predicate: (request: RecordedRequest) => boolean, timeoutMs = 5_000): Promise<RecordedRequest> {
    const seen = this.requests.find(predicate);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        const recent = this.requests.slice(-10).map((request) => `${request.method} ${request.path}`).join(", ");
        reject(new Error(`no matching request within ${timeoutMs} ms; the last ones: ${recent || "none"}`));
      }, timeoutMs);
      const settle = () => { clearTimeout(timer); this.waiters.delete(waiter); };
      const waiter: RequestWaiter = {
        predicate,
        resolve: (request) => { settle(); resolve(request); },
        reject: (error) => { settle(); reject(error); },
      };
      this.waiters.add(waiter);
    });
  }

  dispatch(type: string, data: unknown): void {
    for (const session of this.sessions) {
      if (session.intents !== null) this.sendDispatch(session, type, data);
    }
  }

  slashCommand(input: InteractionUser & { name: string; options?: unknown[] }): { id: string; token: string } {
    const base = this.beginInteraction(InteractionType.ApplicationCommand, input);
    const payload: APIChatInputApplicationCommandGuildInteraction = {
      ...base,
      type: InteractionType.ApplicationCommand,
      data: { ...this.commandData(input.name), options: input.options as APIApplicationCommandInteractionDataOption[] | undefined },
    };
    this.dispatch(GatewayDispatchEvents.InteractionCreate, payload);
    return { id: base.id, token: base.token };
  }

  button(input: InteractionUser & { customId: string; messageId: string }): { id: string; token: string } {
    const message = this.stored.get(input.messageId);
    if (!message) throw new Error(`button on message ${input.messageId}, which this fake Discord never created`);
    const base = this.beginInteraction(InteractionType.MessageComponent, input, message.id);
    const payload: APIGuildInteractionWrapper<APIMessageComponentButtonInteraction> = {
      ...base,
      type: InteractionType.MessageComponent,
      message: this.toApiMessage(message),
      data: { custom_id: input.customId, component_type: ComponentType.Button },
    };
    this.dispatch(GatewayDispatchEvents.InteractionCreate, payload);
    return { id: base.id, token: base.token };
  }

  autocomplete(input: InteractionUser & { name: string; options: unknown[] }): { id: string; token: string } {
    const base = this.beginInteraction(InteractionType.ApplicationCommandAutocomplete, input);
    const payload: APIApplicationCommandAutocompleteGuildInteraction = {
      ...base,
      type: InteractionType.ApplicationCommandAutocomplete,
      data: { ...this.commandData(input.name), options: input.options as APIApplicationCommandInteractionDataOption[] },
    };
    this.dispatch(GatewayDispatchEvents.InteractionCreate, payload);
    return { id: base.id, token: base.token };
  }

  react(input: { messageId: string; userId: string; emoji: string; remove?: boolean }): void {
    const message = this.stored.get(input.messageId);
    const removal: GatewayMessageReactionRemoveDispatchData = {
      type: ReactionType.Normal,
      user_id: input.userId,
      channel_id: message?.channel_id ?? this.channelId,
      message_id: input.messageId,
      guild_id: this.guildId,
      emoji: { id: null, name: input.emoji },
      burst: false,
    };
    if (input.remove) return this.dispatchWithIntent(GatewayIntentBits.GuildMessageReactions, GatewayDispatchEvents.MessageReactionRemove, removal);
    const addition: GatewayMessageReactionAddDispatchData = {
      ...removal,
      member: input.userId === this.botUserId ? this.botMember() : this.memberFor({ userId: input.userId }),
      burst_colors: [],
      ...(message && { message_author_id: this.botUserId }),
    };
    this.dispatchWithIntent(GatewayIntentBits.GuildMessageReactions, GatewayDispatchEvents.MessageReactionAdd, addition);
  }

  expireToken(token: string): void {
    const interaction = this.interactions.get(token);
    if (!interaction) throw new Error(`expireToken: no interaction has the token ${token}`);
    interaction.expired = true;
  }

  async close(): Promise<void> {
    for (const waiter of this.waiters) waiter.reject(new Error("the fake Discord was closed"));
    for (const session of this.sessions) session.socket.terminate();
    await new Promise<void>((resolve) => this.gateway.close(() => resolve()));
    this.http.closeAllConnections();
    await new Promise<void>((resolve, reject) => this.http.close((error) => (error ? reject(error) : resolve())));
  }

  // --- REST --------------------------------------------------------------------------------------------------

  private buildRoutes(): Route[] {
    const app = "(?<app>\\d+)";
    const token = "(?<token>[^/]+)";
    const channel = "/channels/(?<channel>\\d+)";
    const route = (method: string, path: string, handle: Route["handle"]): Route => ({ method, pattern: new RegExp(`^${path}$`), handle });
    return [
      route("GET", "/gateway", () => ok({ url: this.gatewayUrl })),
      route("GET", "/gateway/bot", () => ok({
        url: this.gatewayUrl,
        shards: 1,
        session_start_limit: { total: 1000, remaining: 1000, reset_after: 86_400_000, max_concurrency: 1 },
      } satisfies RESTGetAPIGatewayBotResult)),
      route("GET", "/users/@me", () => ok(this.botUser)),
      route("GET", "/applications/@me", () => ok(this.application())),
      route("GET", `/applications/${app}/commands`, ({ app }) => ok(this.commandList(app))),
      route("PUT", `/applications/${app}/commands`, ({ app }, request) => ok(this.overwriteCommands(app, undefined, request.body))),
      route("GET", `/applications/${app}/guilds/(?<guild>\\d+)/commands`, ({ app, guild }) => ok(this.commandList(app, guild))),
      route("PUT", `/applications/${app}/guilds/(?<guild>\\d+)/commands`, ({ app, guild }, request) => ok(this.overwriteCommands(app, guild, request.body))),
      route("POST", `/interactions/(?<id>\\d+)/${token}/callback`, ({ id, token }, request) => this.interactionCallback(id!, token!, request)),
      route("POST", `/webhooks/${app}/${token}`, (params, request) => this.followUp(this.webhookInteraction(params), request)),
      route("GET", `/webhooks/${app}/${token}/messages/(?<message>@original|\\d+)`, (params) => ok(this.toApiMessage(this.webhookMessage(params)))),
      route("PATCH", `/webhooks/${app}/${token}/messages/(?<message>@original|\\d+)`, (params, request) => ok(this.toApiMessage(this.editMessage(this.webhookMessage(params), request)))),
      route("DELETE", `/webhooks/${app}/${token}/messages/(?<message>@original|\\d+)`, (params) => this.deleteMessage(this.webhookMessage(params))),
      route("GET", channel, ({ channel }) => ok(this.textChannel(channel))),
      route("POST", `${channel}/messages`, ({ channel }, request) => ok(this.toApiMessage(this.createChannelMessage(channel!, request)))),
      route("GET", `${channel}/messages/(?<message>\\d+)`, (params) => ok(this.toApiMessage(this.channelMessage(params)))),
      route("PATCH", `${channel}/messages/(?<message>\\d+)`, (params, request) => ok(this.toApiMessage(this.editMessage(this.channelMessage(params), request)))),
      route("DELETE", `${channel}/messages/(?<message>\\d+)`, (params) => this.deleteMessage(this.channelMessage(params))),
      route("PUT", `${channel}/messages/(?<message>\\d+)/reactions/(?<emoji>[^/]+)/@me`, (params) => this.ownReaction(params, false)),
      route("DELETE", `${channel}/messages/(?<message>\\d+)/reactions/(?<emoji>[^/]+)/@me`, (params) => this.ownReaction(params, true)),
      route("POST", `${channel}/typing`, ({ channel }) => {
        this.textChannel(channel);
        return NO_CONTENT;
      }),
    ];
  }

  private async onRequest(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const at = performance.now();
    const url = new URL(request.url ?? "/", this.apiUrl);
    const chunks: Buffer[] = [];
    for await (const chunk of request) chunks.push(chunk as Buffer);
    if (request.method === "GET" && url.pathname.startsWith("/attachments/")) return this.serveAttachment(url.pathname, response);

    const recorded: RecordedRequest = {
      method: request.method ?? "GET",
      // Decoded, as @discordjs/rest escapes "@original", emoji and the like: "/messages/@original", not "%40original".
      path: decodePath(url.pathname.startsWith(`${API_PREFIX}/`) ? url.pathname.slice(API_PREFIX.length) : url.pathname),
      query: Object.fromEntries(url.searchParams),
      body: undefined,
      files: [],
      at,
    };
    let reply: Reply;
    try {
      Object.assign(recorded, await parseRequestBody(Buffer.concat(chunks), request.headers["content-type"] ?? ""));
      reply = this.route(recorded);
    } catch (error) {
      // Anything but a Discord error is a fault of the fake; a 500 shows it to the bot (after @discordjs/rest's retries).
      reply = error instanceof DiscordApiError
        ? { status: error.status, body: { message: error.message, code: error.code, ...(error.errors !== undefined && { errors: error.errors }) } }
        : { status: 500, body: { message: `fake Discord: ${error instanceof Error ? error.stack : String(error)}`, code: 0 } };
    }
    this.requests.push(recorded);
    for (const waiter of this.waiters) if (waiter.predicate(recorded)) waiter.resolve(recorded);

    if (reply.body === undefined) {
      response.writeHead(reply.status).end();
    } else {
      response.writeHead(reply.status, { "content-type": "application/json" }).end(JSON.stringify(reply.body));
    }
  }

  private route(request: RecordedRequest): Reply {
    for (const route of this.routes) {
      const match = route.method === request.method ? route.pattern.exec(request.path) : null;
      if (match) return route.handle(match.groups ?? {}, request);
    }
    throw apiError("notFound");
  }

  /** The CDN side: attachment urls point here, at /attachments/<channel>/<attachment>/<filename>. */
  private serveAttachment(pathname: string, response: ServerResponse): void {
    const [, , channelId, attachmentId] = pathname.split("/");
    const attachment = [...this.stored.values()]
      .filter((message) => message.channel_id === channelId)
      .flatMap((message) => message.attachments)
      .find((candidate) => candidate.id === attachmentId);
    if (!attachment) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { "content-type": attachment.content_type ?? "application/octet-stream" }).end(attachment.data);
  }

  private interactionCallback(id: string, token: string, request: RecordedRequest): Reply {
    const interaction = this.interactions.get(token);
    // Discord forgets an interaction 3 s after it arrived unanswered; the fake's stand-in for that is expireToken.
    if (!interaction || interaction.id !== id || interaction.expired) throw apiError("unknownInteraction");
    if (interaction.acknowledged) throw apiError("alreadyAcknowledged");
    const { type, data } = parse(callbackBody, request.body);
    let message: StoredMessage | undefined;
    switch (type) {
      case InteractionResponseType.ChannelMessageWithSource: {
        const body = parse(messageBody, data ?? {});
        requireSomething(body, request.files);
        message = this.createInteractionMessage(interaction, body, request.files, NO_FLAGS);
        interaction.originalMessageId = message.id;
        break;
      }
      case InteractionResponseType.DeferredChannelMessageWithSource:
        // Discord shows "<bot> is thinking…": a message flagged Loading that the first edit fills in.
        message = this.createInteractionMessage(interaction, parse(messageBody, data ?? {}), [], MessageFlags.Loading);
        interaction.originalMessageId = message.id;
        break;
      case InteractionResponseType.DeferredMessageUpdate:
      case InteractionResponseType.UpdateMessage: {
        if (interaction.componentMessageId === undefined) throw invalidFormBody(`response type ${type} is only for component interactions`);
        interaction.originalMessageId = interaction.componentMessageId;
        message = this.liveMessage(interaction.componentMessageId);
        if (type === InteractionResponseType.UpdateMessage) this.applyEdit(message, parse(messageBody, data ?? {}), request.files);
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
    if (request.query.with_response !== "true") return NO_CONTENT;
    const result: RESTPostAPIInteractionCallbackWithResponseResult = {
      interaction: {
        id: interaction.id,
        type: interaction.type,
        ...(message && {
          response_message_id: message.id,
          response_message_loading: (message.flags & MessageFlags.Loading) !== 0,
          response_message_ephemeral: (message.flags & MessageFlags.Ephemeral) !== 0,
        }),
      },
      resource: { type, ...(message && { message: this.toApiMessage(message) }) },
    };
    return ok(result);
  }

  private webhookInteraction({ app, token }: Record<string, string>): InteractionState {
    const interaction = this.interactions.get(token!);
    if (app !== this.applicationId || !interaction) throw apiError("unknownWebhook");
    if (interaction.expired) throw apiError("invalidWebhookToken");
    // The webhook exists only once the interaction has been answered.
    if (!interaction.acknowledged) throw apiError("unknownWebhook");
    return interaction;
  }

  private webhookMessage(params: Record<string, string>): StoredMessage {
    const interaction = this.webhookInteraction(params);
    const id = params.message === "@original" ? interaction.originalMessageId : params.message;
    const message = id === undefined ? undefined : this.stored.get(id);
    const belongs = message && (message.id === interaction.originalMessageId || message.interaction_token === interaction.token);
    if (!message || message.deleted || !belongs) throw apiError("unknownMessage");
    return message;
  }

  private followUp(interaction: InteractionState, request: RecordedRequest): Reply {
    const body = parse(messageBody, request.body);
    requireSomething(body, request.files);
    const message = this.createInteractionMessage(interaction, body, request.files, NO_FLAGS);
    return request.query.wait === "true" ? ok(this.toApiMessage(message)) : NO_CONTENT;
  }

  private channelMessage({ channel, message: id }: Record<string, string>): StoredMessage {
    this.textChannel(channel);
    const message = this.stored.get(id!);
    if (!message || message.deleted || message.channel_id !== channel) throw apiError("unknownMessage");
    return message;
  }

  private liveMessage(id: string): StoredMessage {
    const message = this.stored.get(id);
    if (!message || message.deleted) throw apiError("unknownMessage");
    return message;
  }

  private createChannelMessage(channelId: string, request: RecordedRequest): StoredMessage {
    this.textChannel(channelId);
    const body = parse(messageBody, request.body);
    requireSomething(body, request.files);
    const reference = body.message_reference?.message_id ? { ...body.message_reference, channel_id: channelId, guild_id: this.guildId } : undefined;
    const message = this.newMessage(channelId, reference ? MessageType.Reply : MessageType.Default, body.flags ?? NO_FLAGS);
    if (reference) message.message_reference = reference;
    return this.publish(message, body, request.files);
  }

  private createInteractionMessage(interaction: InteractionState, body: MessageBody, files: RecordedRequest["files"], extraFlags: number): StoredMessage {
    const type = interaction.type === InteractionType.ApplicationCommand ? MessageType.ChatInputCommand : MessageType.Default;
    const message = this.newMessage(this.channelId, type, (body.flags ?? NO_FLAGS) | extraFlags);
    message.interaction_token = interaction.token;
    const common = { id: interaction.id, user: interaction.user, authorizing_integration_owners: this.integrationOwners() };
    const followUpOf = interaction.originalMessageId === undefined ? {} : { original_response_message_id: interaction.originalMessageId };
    message.interaction_metadata = interaction.componentMessageId === undefined
      ? { ...common, ...followUpOf, type: InteractionType.ApplicationCommand }
      : { ...common, ...followUpOf, type: InteractionType.MessageComponent, interacted_message_id: interaction.componentMessageId };
    return this.publish(message, body, files);
  }

  private newMessage(channelId: string, type: MessageType, flags: number): StoredMessage {
    return {
      id: this.nextId(), channel_id: channelId, type, flags, content: "", embeds: [], components: [], attachments: [],
      timestamp: new Date().toISOString(), edited_timestamp: null, edits: 0,
    };
  }

  /** Fills in a new message, stores it and tells the gateway, as Discord does (never for ephemeral messages). */
  private publish(message: StoredMessage, body: MessageBody, files: RecordedRequest["files"]): StoredMessage {
    this.applyBody(message, body, files);
    this.stored.set(message.id, message);
    if (!(message.flags & MessageFlags.Ephemeral)) {
      this.dispatchWithIntent(GatewayIntentBits.GuildMessages, GatewayDispatchEvents.MessageCreate, { ...this.toApiMessage(message), guild_id: this.guildId });
    }
    return message;
  }

  private editMessage(message: StoredMessage, request: RecordedRequest): StoredMessage {
    this.applyEdit(message, parse(messageBody, request.body), request.files);
    return message;
  }

  private applyEdit(message: StoredMessage, body: MessageBody, files: RecordedRequest["files"]): void {
    this.applyBody(message, body, files);
    if (body.flags != null) message.flags = body.flags | (message.flags & MessageFlags.Ephemeral);
    message.flags &= ~MessageFlags.Loading;
    message.edits += 1;
    message.edited_timestamp = new Date().toISOString();
    if (!(message.flags & MessageFlags.Ephemeral)) {
      this.dispatchWithIntent(GatewayIntentBits.GuildMessages, GatewayDispatchEvents.MessageUpdate, { ...this.toApiMessage(message), guild_id: this.guildId });
    }
  }

  /** Discord's rules: fields left out stay; `attachments`, when given, lists the old attachments to keep, and every
   *  uploaded file becomes a new one, named as its attachments entry (id = the N of files[N]) says. */
  private applyBody(message: StoredMessage, body: MessageBody, files: RecordedRequest["files"]): void {
    if (body.content !== undefined) message.content = body.content ?? "";
    if (body.embeds !== undefined) message.embeds = body.embeds ?? [];
    if (body.components !== undefined) message.components = body.components ?? [];
    const listed = body.attachments ?? undefined;
    const kept = listed === undefined ? message.attachments : message.attachments.filter((old) => listed.some((entry) => entry.id === old.id));
    const added = files.map((file) => {
      const index = /^files\[(\d+)\]$/.exec(file.field)?.[1];
      const entry = listed?.find((candidate) => candidate.id === index);
      return {
        id: this.nextId(), filename: entry?.filename ?? file.name, size: file.data.length, data: file.data,
        ...(file.contentType && { content_type: file.contentType }),
      };
    });
    message.attachments = [...kept, ...added];
  }

  private deleteMessage(message: StoredMessage): Reply {
    message.deleted = true;
    if (!(message.flags & MessageFlags.Ephemeral)) {
      this.dispatchWithIntent(GatewayIntentBits.GuildMessages, GatewayDispatchEvents.MessageDelete, { id: message.id, channel_id: message.channel_id, guild_id: this.guildId });
    }
    return NO_CONTENT;
  }

  /** The bot reacting itself: Discord sends the bot its own MESSAGE_REACTION_ADD too. */
  private ownReaction(params: Record<string, string>, remove: boolean): Reply {
    const message = this.channelMessage(params);
    this.react({ messageId: message.id, userId: this.botUserId, emoji: params.emoji!, remove });
    return NO_CONTENT;
  }

  private commandList(app: string | undefined, guildId?: string): APIApplicationCommand[] {
    if (app !== this.applicationId) throw apiError("unknownApplication");
    if (guildId === undefined) return this.commands.global;
    if (guildId !== this.guildId) throw apiError("missingAccess");
    return this.commands.guild.get(guildId) ?? [];
  }

  /** Bulk overwrite; a command keeps its id when one of the same name and type was registered before, as on Discord. */
  private overwriteCommands(app: string | undefined, guildId: string | undefined, body: unknown): APIApplicationCommand[] {
    const previous = this.commandList(app, guildId);
    const registered = parse(commandsBody, body).map((command): APIApplicationCommand => ({
      ...command,
      id: previous.find((old) => old.name === command.name && old.type === command.type)?.id ?? this.nextId(),
      application_id: this.applicationId,
      version: this.nextId(),
      default_member_permissions: command.default_member_permissions ?? null,
      ...(guildId !== undefined && { guild_id: guildId }),
    }));
    if (guildId === undefined) this.commands.global = registered;
    else this.commands.guild.set(guildId, registered);
    return registered;
  }

  // --- gateway -----------------------------------------------------------------------------------------------

  private onGatewayConnection(socket: WebSocket, request: IncomingMessage): void {
    const query = new URL(request.url ?? "/", this.gatewayUrl).searchParams;
    // compress=zlib-stream (asked for only when zlib-sync is installed) is ignored on purpose: @discordjs/ws parses
    // text frames as plain JSON whatever it asked for.
    if (query.get("v") !== "10" || (query.get("encoding") ?? "json") !== "json") {
      socket.close(4012, "the fake Discord speaks only v=10 with encoding=json");
      return;
    }
    const session: GatewaySession = { socket, sequence: 0, intents: null };
    this.sessions.add(session);
    socket.on("close", () => this.sessions.delete(session));
    socket.on("message", (data) => this.onGatewayMessage(session, data));
    this.send(session, { op: GatewayOpcodes.Hello, d: { heartbeat_interval: HEARTBEAT_INTERVAL_MS } });
  }

  private onGatewayMessage(session: GatewaySession, data: RawData): void {
    let payload: z.infer<typeof gatewayPayload>;
    try {
      payload = gatewayPayload.parse(JSON.parse(data.toString()));
    } catch {
      session.socket.close(4002, "Error while decoding payload.");
      return;
    }
    switch (payload.op) {
      case GatewayOpcodes.Heartbeat:
        this.send(session, { op: GatewayOpcodes.HeartbeatAck });
        break;
      case GatewayOpcodes.Identify:
        this.identify(session, payload.d);
        break;
      case GatewayOpcodes.Resume:
        // Sessions are not kept, so a resume is refused; the client then identifies afresh.
        this.send(session, { op: GatewayOpcodes.InvalidSession, d: false });
        break;
      case GatewayOpcodes.RequestGuildMembers:
        this.sendMemberChunk(session, payload.d);
        break;
      default:
        break;
    }
  }

  private identify(session: GatewaySession, data: unknown): void {
    const identify = identifyData.safeParse(data);
    if (!identify.success) {
      session.socket.close(4002, "Error while decoding payload.");
      return;
    }
    session.intents = identify.data.intents;
    const ready: GatewayReadyDispatchData = {
      v: 10,
      user: this.botUser,
      guilds: [{ id: this.guildId, unavailable: true }],
      session_id: randomBytes(16).toString("hex"),
      resume_gateway_url: this.gatewayUrl,
      shard: [0, 1],
      application: { id: this.applicationId, flags: APPLICATION_FLAGS, flags_new: APPLICATION_FLAGS.toString() },
    };
    this.sendDispatch(session, GatewayDispatchEvents.Ready, ready);
    // READY lists the guild as unavailable; discord.js emits clientReady only once GUILD_CREATE has filled it in
    // (or after waitGuildTimeout, 15 s).
    this.sendDispatch(session, GatewayDispatchEvents.GuildCreate, this.guild());
    this.markIdentified();
  }

  private sendMemberChunk(session: GatewaySession, data: unknown): void {
    const request = requestMembersData.safeParse(data);
    if (!request.success) return;
    const { user_ids: userIds, query, limit, nonce } = request.data;
    const wanted = userIds === undefined ? undefined : [userIds].flat();
    const all = [this.botMember(), ...this.members.values()];
    const found = all
      .filter((member) => (wanted ? wanted.includes(member.user.id) : member.user.username.startsWith(query ?? "")))
      .slice(0, limit > 0 ? limit : undefined);
    const chunk: GatewayGuildMembersChunkDispatchData = {
      guild_id: this.guildId,
      members: found,
      chunk_index: 0,
      chunk_count: 1,
      ...(wanted && { not_found: wanted.filter((id) => !found.some((member) => member.user.id === id)) }),
      ...(nonce !== undefined && { nonce }),
    };
    this.sendDispatch(session, GatewayDispatchEvents.GuildMembersChunk, chunk);
  }

  private dispatchWithIntent(intent: GatewayIntentBits, type: string, data: unknown): void {
    for (const session of this.sessions) {
      if (session.intents !== null && (session.intents & intent) !== 0) this.sendDispatch(session, type, data);
    }
  }

  private sendDispatch(session: GatewaySession, type: string, data: unknown): void {
    session.sequence += 1;
    this.send(session, { op: GatewayOpcodes.Dispatch, t: type, s: session.sequence, d: data });
  }

  private send(session: GatewaySession, payload: { op: GatewayOpcodes; d?: unknown; t?: string; s?: number }): void {
    session.socket.send(JSON.stringify({ t: null, s: null, d: null, ...payload }));
  }

  // --- Discord objects ---------------------------------------------------------------------------------------

  /** Snowflakes from the clock, strictly increasing, so discord.js can read creation times from them. */
  private nextId(): string {
    const now = (BigInt(Date.now()) - DISCORD_EPOCH) << 22n;
    this.lastId = now > this.lastId ? now : this.lastId + 1n;
    return this.lastId.toString();
  }

  private beginInteraction(type: InteractionType, input: InteractionUser, componentMessageId?: string) {
    const id = this.nextId();
    // Shaped like Discord's: base64 of "interaction:<id>:<secret>", safe in a URL path as it is.
    const token = Buffer.from(`interaction:${id}:${randomBytes(48).toString("base64url")}`).toString("base64url");
    const member = this.memberFor(input);
    this.interactions.set(token, { id, token, type, user: member.user, componentMessageId, acknowledged: false, expired: false });
    return {
      id,
      token,
      application_id: this.applicationId,
      version: 1 as const,
      guild_id: this.guildId,
      guild: { id: this.guildId, locale: Locale.EnglishUS, features: [] },
      channel_id: this.channelId,
      channel: this.textChannel(this.channelId),
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

  /** The command's registered id, guild commands first, as Discord sends it; a fresh id for unregistered names. */
  private commandData(name: string) {
    const command = [...(this.commands.guild.get(this.guildId) ?? []), ...this.commands.global]
      .find((candidate) => candidate.name === name && candidate.type === ApplicationCommandType.ChatInput);
    return {
      id: command?.id ?? this.nextId(),
      name,
      type: ApplicationCommandType.ChatInput as const,
      ...(command?.guild_id !== undefined && { guild_id: command.guild_id }),
    };
  }

  private integrationOwners() {
    return { [ApplicationIntegrationType.GuildInstall]: this.guildId };
  }

  private memberFor({ userId, username, roles }: InteractionUser): APIInteractionGuildMember {
    const unknownRole = roles?.find((role) => !this.roles.some((known) => known.id === role));
    if (unknownRole !== undefined) {
      throw new Error(`role ${unknownRole} is not one of the guild's roles (${this.roles.map((role) => role.id).join(", ")}); list it in startFakeDiscord({ roles })`);
    }
    const previous = this.members.get(userId);
    const name = username ?? previous?.user.username ?? `user${userId.slice(-4)}`;
    const member: APIInteractionGuildMember = {
      user: { id: userId, username: name, global_name: name, discriminator: "0", avatar: null },
      roles: roles ?? previous?.roles ?? [],
      permissions: EVERYONE_PERMISSIONS,
      joined_at: previous?.joined_at ?? new Date().toISOString(),
      nick: null, avatar: null, premium_since: null, pending: false, communication_disabled_until: null,
      deaf: false, mute: false, flags: NO_FLAGS,
    };
    this.members.set(userId, member);
    return member;
  }

  private botMember(): APIInteractionGuildMember {
    return {
      user: this.botUser, roles: [], permissions: EVERYONE_PERMISSIONS, joined_at: new Date(0).toISOString(),
      nick: null, avatar: null, premium_since: null, pending: false, communication_disabled_until: null,
      deaf: false, mute: false, flags: NO_FLAGS,
    };
  }

  private textChannel(channelId: string | undefined): APIGuildTextChannel<ChannelType.GuildText> {
    if (channelId !== this.channelId) throw apiError("unknownChannel");
    return {
      id: this.channelId, type: ChannelType.GuildText, guild_id: this.guildId, name: "general", position: 0,
      permission_overwrites: [], nsfw: false, parent_id: null, topic: null, last_message_id: null, rate_limit_per_user: 0,
      flags: NO_FLAGS,
    };
  }

  private guild(): GatewayGuildCreateDispatchData {
    const members = [this.botMember(), ...this.members.values()];
    return {
      id: this.guildId, name: "Fake Guild", icon: null, splash: null, discovery_splash: null, banner: null, description: null,
      owner_id: this.botUserId, afk_channel_id: null, afk_timeout: 300, application_id: null,
      verification_level: GuildVerificationLevel.None,
      default_message_notifications: GuildDefaultMessageNotifications.OnlyMentions,
      explicit_content_filter: GuildExplicitContentFilter.Disabled,
      mfa_level: GuildMFALevel.None, nsfw_level: GuildNSFWLevel.Default, premium_tier: GuildPremiumTier.None,
      system_channel_id: null, system_channel_flags: GuildSystemChannelFlags.SuppressJoinNotifications,
      rules_channel_id: null, public_updates_channel_id: null, safety_alerts_channel_id: null,
      vanity_url_code: null, preferred_locale: Locale.EnglishUS, premium_progress_bar_enabled: false,
      hub_type: null, incidents_data: null, features: [], emojis: [], stickers: [], roles: this.roles,
      joined_at: new Date(0).toISOString(), large: false, unavailable: false, member_count: members.length,
      members, channels: [this.textChannel(this.channelId)], threads: [], presences: [], voice_states: [],
      stage_instances: [], guild_scheduled_events: [], soundboard_sounds: [],
    };
  }

  private application(): APIApplication {
    return {
      id: this.applicationId, name: this.botUser.username, icon: null, description: "", summary: "",
      bot_public: false, bot_require_code_grant: false, verify_key: "0".repeat(64), team: null,
      flags: APPLICATION_FLAGS,
      flags_new: APPLICATION_FLAGS.toString(),
    };
  }

  private toApiMessage(message: StoredMessage): APIMessage {
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
        webhook_id: this.applicationId,
        application_id: this.applicationId,
        interaction_metadata: message.interaction_metadata,
      }),
      ...(message.message_reference && { message_reference: message.message_reference }),
    };
  }
}

function decodePath(path: string): string {
  try {
    return decodeURIComponent(path);
  } catch {
    return path;
  }
}

/** Discord refuses a message with nothing in it. */
function requireSomething(body: MessageBody, files: RecordedRequest["files"]): void {
  const empty = !body.content && !body.embeds?.length && !body.components?.length && files.length === 0;
  if (empty) throw apiError("emptyMessage");
}

/** JSON as is; multipart/form-data as discord.js sends files: the JSON in payload_json, files in files[N] parts. */
async function parseRequestBody(raw: Buffer, contentType: string): Promise<Pick<RecordedRequest, "body" | "files">> {
  if (raw.length === 0) return { body: undefined, files: [] };
  const json = (text: string): unknown => {
    try {
      return JSON.parse(text);
    } catch {
      throw apiError("invalidJson");
    }
  };
  if (!contentType.startsWith("multipart/form-data")) {
    return { body: contentType.startsWith("application/json") ? json(raw.toString("utf8")) : raw.toString("utf8"), files: [] };
  }
  const form = await new Response(raw, { headers: { "content-type": contentType } }).formData();
  const fields: Record<string, unknown> = {};
  const files: RecordedRequest["files"] = [];
  for (const [field, value] of form) {
    if (typeof value === "string") fields[field] = field === "payload_json" ? json(value) : value;
    else files.push({ field, name: value.name, contentType: value.type, data: Buffer.from(await value.arrayBuffer()) });
  }
  return { body: "payload_json" in fields ? fields.payload_json : fields, files };
}
