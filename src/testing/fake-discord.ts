// A local Discord for tests and the benchmark: the REST API under /api/v10 and the gateway WebSocket on one port,
// faithful enough that an unmodified discord.js Client logs in, receives interactions and reactions and answers
// them. Every REST call is recorded, and messages keep the bytes of their attachments. This file is the entry point
// and the HTTP side; the guild's state is in fake-discord-guild.ts, the gateway in fake-discord-gateway.ts and the
// wire format (Discord's objects, accepted bodies, errors) in fake-discord-payloads.ts.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";
import type { APIApplicationCommand, RESTGetAPIGatewayBotResult } from "discord.js";
import { FakeDiscordGateway } from "./fake-discord-gateway.js";
import { FakeDiscordGuild, type FakeMessage, type InteractionUser, type UploadedFile } from "./fake-discord-guild.js";
import { apiError, DiscordApiError, DiscordPayloads, Snowflakes } from "./fake-discord-payloads.js";

export type { FakeMessage, InteractionUser } from "./fake-discord-guild.js";

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
  files: UploadedFile[];
  /** performance.now() when the request arrived. */
  at: number;
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

interface Reply {
  status: number;
  body?: unknown;
}

interface Route {
  method: string;
  pattern: RegExp;
  handle: (params: Record<string, string>, request: RecordedRequest) => Reply;
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
  readonly commands: FakeDiscord["commands"];

  private readonly gatewayUrl: string;
  private readonly payloads: DiscordPayloads;
  private readonly guild: FakeDiscordGuild;
  private readonly gateway: FakeDiscordGateway;
  private readonly waiters = new Set<RequestWaiter>();
  private readonly routes: Route[];

  constructor(private readonly http: Server, host: string, options: FakeDiscordOptions) {
    this.apiUrl = `http://${host}/api`;
    this.gatewayUrl = `ws://${host}`;
    const snowflakes = new Snowflakes();
    this.applicationId = options.applicationId ?? snowflakes.next();
    this.botUserId = options.botUserId ?? this.applicationId;
    this.guildId = options.guildId ?? snowflakes.next();
    this.channelId = options.channelId ?? snowflakes.next();
    const identity = { applicationId: this.applicationId, botUserId: this.botUserId, guildId: this.guildId, channelId: this.channelId };
    this.payloads = new DiscordPayloads(identity, `http://${host}/attachments`);
    this.guild = new FakeDiscordGuild(identity, this.payloads, snowflakes,
      (type, data, intent) => this.gateway.dispatch(type, data, intent), options.roles ?? []);
    this.messages = this.guild.messages;
    this.commands = this.guild.commands;
    this.routes = this.buildRoutes();
    http.on("request", (request, response) => this.onRequest(request, response).catch(() => response.destroy()));
    this.gateway = new FakeDiscordGateway(http, this.gatewayUrl, this.guild, this.payloads);
  }

  ready(): Promise<void> {
    return this.gateway.identified;
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
    this.gateway.dispatch(type, data);
  }

  slashCommand(input: InteractionUser & { name: string; options?: unknown[] }): { id: string; token: string } {
    return this.guild.slashCommand(input);
  }

  button(input: InteractionUser & { customId: string; messageId: string }): { id: string; token: string } {
    return this.guild.button(input);
  }

  autocomplete(input: InteractionUser & { name: string; options: unknown[] }): { id: string; token: string } {
    return this.guild.autocomplete(input);
  }

  react(input: { messageId: string; userId: string; emoji: string; remove?: boolean }): void {
    this.guild.react(input);
  }

  expireToken(token: string): void {
    this.guild.expireToken(token);
  }

  async close(): Promise<void> {
    for (const waiter of this.waiters) waiter.reject(new Error("the fake Discord was closed"));
    await this.gateway.close();
    this.http.closeAllConnections();
    await new Promise<void>((resolve, reject) => this.http.close((error) => (error ? reject(error) : resolve())));
  }

  private buildRoutes(): Route[] {
    const app = "(?<app>\\d+)";
    const token = "(?<token>[^/]+)";
    const channel = "/channels/(?<channel>\\d+)";
    const webhookMessage = `/webhooks/${app}/${token}/messages/(?<message>@original|\\d+)`;
    const channelMessage = `${channel}/messages/(?<message>\\d+)`;
    const route = (method: string, path: string, handle: Route["handle"]): Route => ({ method, pattern: new RegExp(`^${path}$`), handle });
    const guild = this.guild;
    const toApi = this.payloads.message.bind(this.payloads);
    return [
      route("GET", "/gateway", () => ok({ url: this.gatewayUrl })),
      route("GET", "/gateway/bot", () => ok({
        url: this.gatewayUrl,
        shards: 1,
        session_start_limit: { total: 1000, remaining: 1000, reset_after: 86_400_000, max_concurrency: 1 },
      } satisfies RESTGetAPIGatewayBotResult)),
      route("GET", "/users/@me", () => ok(this.payloads.botUser)),
      route("GET", "/applications/@me", () => ok(this.payloads.application())),
      route("GET", `/applications/${app}/commands`, ({ app }) => ok(guild.commandList(app!))),
      route("PUT", `/applications/${app}/commands`, ({ app }, request) => ok(guild.overwriteCommands(app!, undefined, request.body))),
      route("GET", `/applications/${app}/guilds/(?<guild>\\d+)/commands`, ({ app, guild: guildId }) => ok(guild.commandList(app!, guildId))),
      route("PUT", `/applications/${app}/guilds/(?<guild>\\d+)/commands`,
        ({ app, guild: guildId }, request) => ok(guild.overwriteCommands(app!, guildId, request.body))),
      route("POST", `/interactions/(?<id>\\d+)/${token}/callback`, ({ id, token }, request) => {
        const withResponse = request.query.with_response === "true";
        const result = guild.interactionCallback(id!, token!, { body: request.body, files: request.files, withResponse });
        return result === undefined ? NO_CONTENT : ok(result);
      }),
      route("POST", `/webhooks/${app}/${token}`, ({ app, token }, request) => {
        const created = guild.followUp(app!, token!, request.body, request.files);
        return request.query.wait === "true" ? ok(toApi(created)) : NO_CONTENT;
      }),
      route("GET", webhookMessage, (params) => ok(toApi(guild.webhookMessage(params.app!, params.token!, params.message!)))),
      route("PATCH", webhookMessage, (params, request) => {
        const message = guild.webhookMessage(params.app!, params.token!, params.message!);
        return ok(toApi(guild.editMessage(message, request.body, request.files)));
      }),
      route("DELETE", webhookMessage, (params) => {
        guild.deleteMessage(guild.webhookMessage(params.app!, params.token!, params.message!));
        return NO_CONTENT;
      }),
      route("GET", channel, ({ channel }) => ok(guild.channel(channel!))),
      route("POST", `${channel}/messages`, ({ channel }, request) => ok(toApi(guild.createChannelMessage(channel!, request.body, request.files)))),
      route("GET", channelMessage, (params) => ok(toApi(guild.channelMessage(params.channel!, params.message!)))),
      route("PATCH", channelMessage, (params, request) => {
        const message = guild.channelMessage(params.channel!, params.message!);
        return ok(toApi(guild.editMessage(message, request.body, request.files)));
      }),
      route("DELETE", channelMessage, (params) => {
        guild.deleteMessage(guild.channelMessage(params.channel!, params.message!));
        return NO_CONTENT;
      }),
      route("PUT", `${channelMessage}/reactions/(?<emoji>[^/]+)/@me`, (params) => this.ownReaction(params, false)),
      route("DELETE", `${channelMessage}/reactions/(?<emoji>[^/]+)/@me`, (params) => this.ownReaction(params, true)),
      route("POST", `${channel}/typing`, ({ channel }) => {
        guild.channel(channel!);
        return NO_CONTENT;
      }),
    ];
  }

  /** The bot reacting itself: Discord sends the bot its own MESSAGE_REACTION_ADD too. */
  private ownReaction(params: Record<string, string>, remove: boolean): Reply {
    const message = this.guild.channelMessage(params.channel!, params.message!);
    this.guild.react({ messageId: message.id, userId: this.botUserId, emoji: params.emoji!, remove });
    return NO_CONTENT;
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
    const attachment = this.guild.attachment(channelId!, attachmentId!);
    if (!attachment) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { "content-type": attachment.content_type ?? "application/octet-stream" }).end(attachment.data);
  }
}

function decodePath(path: string): string {
  try {
    return decodeURIComponent(path);
  } catch {
    return path;
  }
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
  const files: UploadedFile[] = [];
  for (const [field, value] of form) {
    if (typeof value === "string") fields[field] = field === "payload_json" ? json(value) : value;
    else files.push({ field, name: value.name, contentType: value.type, data: Buffer.from(await value.arrayBuffer()) });
  }
  return { body: "payload_json" in fields ? fields.payload_json : fields, files };
}
