// The fake Discord's gateway: the WebSocket a discord.js Client connects to, with Hello and heartbeats, Identify
// answered by READY and GUILD_CREATE, refused resumes, member requests, and dispatches sent to every identified
// client (or only to those whose intents ask for them). fake-discord.ts opens it on the REST API's port.
import { randomBytes } from "node:crypto";
import type { IncomingMessage, Server } from "node:http";
import { GatewayDispatchEvents, GatewayOpcodes, type GatewayIntentBits } from "discord.js";
import { WebSocketServer, type RawData, type WebSocket } from "ws";
import { z } from "zod";
import type { FakeDiscordGuild } from "./fake-discord-guild.js";
import type { DiscordPayloads } from "./fake-discord-payloads.js";

/** Discord's value; discord.js waits a random part of it before its first heartbeat. */
const HEARTBEAT_INTERVAL_MS = 41_250;

const gatewayPayload = z.object({ op: z.number().int(), d: z.unknown() });
const identifyData = z.looseObject({ token: z.string().min(1), intents: z.number().int() });
const requestMembersData = z.looseObject({
  guild_id: z.string(),
  query: z.string().optional(),
  limit: z.number().int().default(0),
  user_ids: z.union([z.string(), z.array(z.string())]).optional(),
  nonce: z.string().optional(),
});

interface GatewaySession {
  socket: WebSocket;
  sequence: number;
  /** null until the client identifies. */
  intents: number | null;
}

export class FakeDiscordGateway {
  /** Resolves once a client has identified and READY and GUILD_CREATE were sent to it. */
  readonly identified: Promise<void>;
  private markIdentified!: () => void;
  private readonly server: WebSocketServer;
  private readonly sessions = new Set<GatewaySession>();

  constructor(
    http: Server,
    /** ws://host:port, which READY gives as the url to resume at. */
    private readonly url: string,
    private readonly guild: FakeDiscordGuild,
    private readonly payloads: DiscordPayloads,
  ) {
    this.identified = new Promise((resolve) => { this.markIdentified = resolve; });
    this.server = new WebSocketServer({ server: http });
    this.server.on("connection", (socket, request) => this.onConnection(socket, request));
  }

  /** Sends a dispatch (op 0) to every identified client, or with `intent` only to those that asked for it. */
  dispatch(type: string, data: unknown, intent?: GatewayIntentBits): void {
    for (const session of this.sessions) {
      if (session.intents === null) continue;
      if (intent === undefined || (session.intents & intent) !== 0) this.sendDispatch(session, type, data);
    }
  }

  async close(): Promise<void> {
    for (const session of this.sessions) session.socket.terminate();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private onConnection(socket: WebSocket, request: IncomingMessage): void {
    const query = new URL(request.url ?? "/", this.url).searchParams;
    // compress=zlib-stream (asked for only when zlib-sync is installed) is ignored on purpose: @discordjs/ws parses
    // text frames as plain JSON whatever it asked for.
    if (query.get("v") !== "10" || (query.get("encoding") ?? "json") !== "json") {
      socket.close(4012, "the fake Discord speaks only v=10 with encoding=json");
      return;
    }
    const session: GatewaySession = { socket, sequence: 0, intents: null };
    this.sessions.add(session);
    socket.on("close", () => this.sessions.delete(session));
    socket.on("message", (data) => this.onMessage(session, data));
    this.send(session, { op: GatewayOpcodes.Hello, d: { heartbeat_interval: HEARTBEAT_INTERVAL_MS } });
  }

  private onMessage(session: GatewaySession, data: RawData): void {
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
    this.sendDispatch(session, GatewayDispatchEvents.Ready, this.payloads.ready(randomBytes(16).toString("hex"), this.url));
    // READY lists the guild as unavailable; discord.js emits clientReady only once GUILD_CREATE has filled it in
    // (or after waitGuildTimeout, 15 s).
    this.sendDispatch(session, GatewayDispatchEvents.GuildCreate, this.payloads.guild(this.guild.roles, this.guild.allMembers()));
    this.markIdentified();
  }

  private sendMemberChunk(session: GatewaySession, data: unknown): void {
    const request = requestMembersData.safeParse(data);
    if (!request.success) return;
    const { user_ids: userIds, query, limit, nonce } = request.data;
    const wanted = userIds === undefined ? undefined : [userIds].flat();
    const found = this.guild.allMembers()
      .filter((member) => (wanted ? wanted.includes(member.user.id) : member.user.username.startsWith(query ?? "")))
      .slice(0, limit > 0 ? limit : undefined);
    this.sendDispatch(session, GatewayDispatchEvents.GuildMembersChunk, this.payloads.membersChunk(found, wanted, nonce));
  }

  private sendDispatch(session: GatewaySession, type: string, data: unknown): void {
    session.sequence += 1;
    this.send(session, { op: GatewayOpcodes.Dispatch, t: type, s: session.sequence, d: data });
  }

  private send(session: GatewaySession, payload: { op: GatewayOpcodes; d?: unknown; t?: string; s?: number }): void {
    session.socket.send(JSON.stringify({ t: null, s: null, d: null, ...payload }));
  }
}
