// The local web chat, the embedded default adapter: a page on 127.0.0.1 where people type the same commands as
// on Discord and watch the answers arrive (Server-Sent Events). Like a channel, it is one room everybody sees, but
// only what the bot says in public reaches the others: a command whose answer is private (admin tools, lists,
// refusals, typos) stays, with its answer, in the page that typed it. Each page gets a session cookie; a guest is
// counted by their address (so a new cookie resets no limit); admin rights come from a single-use link printed in
// the host's log (like a notebook server's token), never from a name typed in.
import { randomBytes, timingSafeEqual } from "node:crypto";
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { join, relative, sep } from "node:path";
import { z } from "zod";
import { parseCommandText, type Requester } from "../commands.js";
import type { ChatCore, Conversation, MessageHandle } from "../core.js";
import type { BotMessage } from "../messages.js";
import type { ChatAdapter } from "../../plugins.js";
import { PAGE, SCRIPT, STYLE } from "./page.js";
import { addressKey, ClientAddresses, guestKeySecret, HostNames, sameOrigin, SECURITY_HEADERS } from "./request-policy.js";
import { Sessions, type Session } from "./sessions.js";

export interface WebChatOptions {
  host: string;
  port: number;
  core: ChatCore;
  dataDir: string;
  /** The first admin link's secret. Default: random per start. Each link works once; using it logs the next. */
  adminToken?: string;
  /** Host names served besides the bound one (and loopback's, when bound to loopback), e.g. a reverse proxy's
   * public name; "name" at any port or "name:port". Default: none. */
  allowedHosts?: readonly string[];
  /** Proxies (addresses or CIDR ranges) whose X-Forwarded-For names the guest's address. Default: none. */
  trustedProxies?: readonly string[];
  /** A session with no open page and nothing running ends after this long without a request. Default: 24 h. */
  sessionIdleMs?: number;
  /** The most sessions kept at once; a new one beyond it pushes out the longest idle. Default: 1000. */
  maxSessions?: number;
  /** The clock sessions expire by. Default: Date.now. */
  now?: () => number;
  log?: (line: string) => void;
}

/** One chat message as the page shows it; the server sends the whole message again on every change. */
interface ChatMessage {
  id: string;
  author: "you" | "bot";
  text: string;
  /** A URL: /images/… for generated files, data: for previews. */
  image?: string;
  buttons?: Array<Array<{ id: string; label: string; style?: string }>>;
  error?: boolean;
  ephemeral?: boolean;
  deleted?: boolean;
  /** Set on a bot message while the command that wrote it still runs (the page offers "cancel"). */
  running?: boolean;
  /** The session that asked: only it may cancel. */
  owner?: string;
  /** Private messages (ephemeral answers, a command's echo until its answer is public): the only session that sees them. */
  audience?: string;
}

/** A command line may be as long as the body allows: the command layer, not the transport, says what is too long. */
const commandBody = z.strictObject({ text: z.string().trim().min(1) });
const pressBody = z.strictObject({ message: z.string().min(1).max(100), button: z.string().min(1).max(100) });
const reactBody = z.strictObject({ message: z.string().min(1).max(100), emoji: z.string().min(1).max(64), removed: z.boolean().optional() });
const webAddress = z.strictObject({ message: z.string().regex(/^[0-9a-f]{12}$/) });
const cancelBody = z.strictObject({ message: z.string().min(1).max(100) });
const IMAGE_PATH = /^\/images\/([0-9a-f-]{36})\/(grid\.png|grid\.webp|\d\.png)$/;
const MAX_MESSAGES = 200;
/** Far above any command line the config allows (4 000 characters of up to 4 bytes each, JSON-escaped). */
const MAX_BODY_BYTES = 64 * 1024;
const COOKIE = /(?:^|;\s*)autolora_session=([0-9a-f]{32})(?:;|$)/;

class RequestTooLargeError extends Error {
  override readonly name = "RequestTooLargeError";
  readonly code = "request-too-large";
}

export class WebChat implements ChatAdapter {
  readonly name = "web";
  private readonly sessions: Sessions;
  /** The room: the last MAX_MESSAGES messages, oldest first. */
  private readonly messages: ChatMessage[] = [];
  private readonly running = new Map<string, AbortController>();
  private readonly addresses: ClientAddresses;
  private adminToken: string;
  /** Admin links already used, to tell a second click from a wrong link. */
  private readonly usedAdminTokens = new Set<string>();
  private hostNames: HostNames | undefined;
  private guestSecret: Buffer | undefined;
  private server: Server | undefined;
  /** Where it listens, once started. */
  url: string | undefined;

  constructor(private readonly options: WebChatOptions) {
    this.adminToken = options.adminToken ?? newToken();
    this.addresses = new ClientAddresses(options.trustedProxies ?? []);
    this.sessions = new Sessions({
      idleMs: options.sessionIdleMs ?? 24 * 3_600_000, max: options.maxSessions ?? 1000, now: options.now ?? Date.now,
      onEnd: (session) => this.forget(session.id),
    });
  }

  /** Listen; resolves to the URL (and the admin link, to print for the person who started it). */
  async start(): Promise<{ url: string; adminUrl: string }> {
    this.guestSecret = await guestKeySecret(join(this.options.dataDir, "web-chat.key"));
    this.server = createServer((request, response) => {
      this.route(request, response).catch((error: unknown) => {
        if (error instanceof RequestTooLargeError) return send(response, 413, { error: error.message }, { connection: "close" });
        this.options.log?.(`[web] ${request.method} ${request.url}: ${error instanceof Error ? error.message : String(error)}`);
        if (!response.headersSent) send(response, 500, { error: "internal error" });
        else response.end();
      });
    });
    await new Promise<void>((resolve, reject) => {
      this.server!.once("error", reject);
      this.server!.listen(this.options.port, this.options.host, () => resolve());
    });
    const address = this.server.address();
    const port = typeof address === "object" && address ? address.port : this.options.port;
    this.hostNames = new HostNames(this.options.host, port, this.options.allowedHosts ?? []);
    const url = `http://${this.options.host.includes(":") ? `[${this.options.host}]` : this.options.host}:${port}`;
    this.url = url;
    this.options.log?.(`[web] chat on ${url}; admin link (works once; keep it private): ${this.adminUrl()}`);
    return { url, adminUrl: this.adminUrl() };
  }

  async stop(): Promise<void> {
    for (const controller of this.running.values()) controller.abort();
    for (const session of this.sessions.all()) for (const client of session.clients) client.end();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  private adminUrl(): string {
    return `${this.url}/admin?token=${this.adminToken}`;
  }

  private async route(request: IncomingMessage, response: ServerResponse): Promise<void> {
    for (const [name, value] of Object.entries(SECURITY_HEADERS)) response.setHeader(name, value);
    if (!this.hostNames!.allows(request.headers.host)) {
      return send(response, 421, { error: `this chat does not answer to the host name ${JSON.stringify(request.headers.host ?? "")}; if it should, add it to web.allowed_hosts` });
    }
    const url = new URL(request.url ?? "/", "http://localhost");
    if (request.method === "POST" && !sameOrigin(request)) return send(response, 403, { error: "cross-site request refused" });
    const session = this.sessions.find(COOKIE.exec(request.headers.cookie ?? "")?.[1]);
    switch (`${request.method} ${url.pathname}`) {
      case "GET /":
        if (!session) this.newSession(response);
        response.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
        return void response.end(PAGE);
      case "GET /app.js": return asset(response, "text/javascript; charset=utf-8", SCRIPT);
      case "GET /app.css": return asset(response, "text/css; charset=utf-8", STYLE);
      case "GET /admin": return this.admin(url, session, response);
      case "GET /api/events": {
        const live = session ?? this.newSession(response);
        return this.events(live, this.requester(request, live), response);
      }
      case "GET /api/me": return send(response, 200, this.requester(request, session));
    }
    if (request.method === "POST") {
      if (!session) return send(response, 401, { error: "no chat session (it ended, or cookies are off): open the chat page again" });
      return this.action(url.pathname, request, session, response);
    }
    const image = request.method === "GET" ? IMAGE_PATH.exec(url.pathname) : null;
    if (image) return this.image(image[1]!, image[2]!, response);
    send(response, 404, { error: "not found" });
  }

  /** The page's POSTs: a command, a button press, a reaction, a cancel. */
  private async action(path: string, request: IncomingMessage, session: Session, response: ServerResponse): Promise<void> {
    const requester = this.requester(request, session);
    switch (path) {
      case "/api/command": {
        const body = commandBody.safeParse(await readJson(request));
        if (!body.success) return send(response, 400, { error: "send {\"text\": \"/imagine …\"}" });
        this.command(session, requester, body.data.text);
        return send(response, 202, { accepted: true });
      }
      case "/api/press": {
        const body = pressBody.safeParse(await readJson(request));
        const source = body.success ? this.messages.find((message) => message.id === body.data.message && message.author === "bot" && this.visible(message, session)) : undefined;
        if (!body.success || !source) return send(response, 400, { error: "send {\"message\": id, \"button\": id} for a message of this chat" });
        this.run(session, (conversation, signal) => this.options.core.press(body.data.button, requester, conversation, signal), { source });
        return send(response, 202, { accepted: true });
      }
      case "/api/react": {
        const body = reactBody.safeParse(await readJson(request));
        if (!body.success) return send(response, 400, { error: "send {\"message\": id, \"emoji\": \"👍\"}" });
        const outcome = await this.options.core.react(`web:${body.data.message}`, requester, body.data.emoji, body.data.removed);
        return send(response, outcome === "ignored" ? 404 : 200, { outcome });
      }
      case "/api/cancel": {
        const body = cancelBody.safeParse(await readJson(request));
        const owned = body.success ? this.messages.find((message) => message.id === body.data.message) : undefined;
        const controller = owned && (owned.owner === session.id || requester.admin) ? this.running.get(owned.id) : undefined;
        controller?.abort();
        return send(response, controller ? 200 : 404, controller ? { cancelling: true } : { error: "nothing running under that message" });
      }
    }
    send(response, 404, { error: "not found" });
  }

  /** Who a request acts as: the guest its address names (admin if its session opened the admin link). */
  private requester(request: IncomingMessage, session: Session | undefined): Requester {
    const key = addressKey(this.addresses.of(request), this.guestSecret!);
    const requester = this.options.core.requester({ adapter: "web", userId: key, name: `guest-${key.slice(0, 4)}` });
    return session?.admin ? { ...requester, admin: true } : requester;
  }

  private newSession(response: ServerResponse): Session {
    const session = this.sessions.create();
    setCookie(response, session.id);
    return session;
  }

  /** The admin link: right once, then the next one is logged; the session that used it gets a new id. */
  private admin(url: URL, existing: Session | undefined, response: ServerResponse): void {
    const given = url.searchParams.get("token") ?? "";
    if (!sameSecret(given, this.adminToken)) {
      return send(response, 403, {
        error: this.usedAdminTokens.has(given)
          ? "this admin link was used already; the next one is in the host's log (the terminal running `autolora serve` or `make demo`)"
          : "wrong admin link",
      });
    }
    this.usedAdminTokens.add(given);
    this.adminToken = newToken();
    this.options.log?.(`[web] the admin link was used; the next admin link (works once; keep it private): ${this.adminUrl()}`);
    let session = existing;
    if (session) {
      const old = this.sessions.rotate(session);
      for (const message of this.messages) {
        if (message.owner === old) message.owner = session.id;
        if (message.audience === old) message.audience = session.id;
      }
    } else {
      session = this.sessions.create();
    }
    session.admin = true;
    setCookie(response, session.id);
    response.writeHead(303, { location: "/" });
    response.end();
  }

  private events(session: Session, requester: Requester, response: ServerResponse): void {
    response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store", connection: "keep-alive" });
    response.write(`event: me\ndata: ${JSON.stringify(requester)}\n\n`);
    for (const message of this.messages) if (this.visible(message, session)) response.write(`data: ${JSON.stringify(shown(message))}\n\n`);
    session.clients.add(response);
    response.on("close", () => {
      session.clients.delete(response);
      this.sessions.touch(session);
    });
  }

  private visible(message: ChatMessage, session: Session): boolean {
    return message.audience === undefined || message.audience === session.id;
  }

  /** Add or update a message and send it to every session that may see it. */
  private push(message: ChatMessage): void {
    if (!this.messages.includes(message)) {
      this.messages.push(message);
      if (this.messages.length > MAX_MESSAGES) this.messages.shift();
    }
    const data = `data: ${JSON.stringify(shown(message))}\n\n`;
    for (const session of this.sessions.all()) {
      if (!this.visible(message, session)) continue;
      for (const client of session.clients) if (!client.writableEnded) client.write(data);
    }
  }

  /** A session ended: what only it could see goes with it. */
  private forget(session: string): void {
    for (let index = this.messages.length - 1; index >= 0; index--) {
      if (this.messages[index]!.audience === session) this.messages.splice(index, 1);
    }
  }

  /**
   * A typed line: its echo is private until the bot answers it in public, and stays private for good where the
   * command never answers others (private or admin commands) or the line is no command at all.
   */
  private command(session: Session, requester: Requester, text: string): void {
    const echo: ChatMessage = { id: randomBytes(6).toString("hex"), author: "you", text: `${requester.name}: ${text}`, owner: session.id, audience: session.id };
    this.push(echo);
    const publish = this.answersInPublic(text) ? () => {
      if (echo.audience === undefined) return;
      delete echo.audience;
      this.push(echo);
    } : undefined;
    this.run(session, (conversation, signal) => this.options.core.handleText(text, requester, conversation, signal), { publish });
  }

  private answersInPublic(line: string): boolean {
    try {
      const { command, subcommand } = parseCommandText(line, this.options.core.context.commands);
      const sub = command.subcommands?.find((entry) => entry.name === subcommand);
      return !command.private && !command.adminOnly && !sub?.adminOnly;
    } catch {
      return false;
    }
  }

  /**
   * Run a command or button press with a conversation that writes bot messages into this session. `publish` is
   * called before the first answer that everyone sees.
   */
  private run(session: Session, work: (conversation: Conversation, signal: AbortSignal) => Promise<void>,
    options: { source?: ChatMessage; publish?: () => void } = {}): void {
    const controller = new AbortController();
    const written: ChatMessage[] = [];
    session.running += 1;
    const conversation: Conversation = {
      answer: async (message) => {
        if (!message.ephemeral) options.publish?.();
        const posted: ChatMessage = {
          id: randomBytes(6).toString("hex"), author: "bot", text: "", running: true, owner: session.id,
          ...(message.ephemeral ? { audience: session.id } : {}),
        };
        written.push(posted);
        this.running.set(posted.id, controller);
        this.push(Object.assign(posted, this.render(message)));
        return this.handle(posted);
      },
      removeSource: async () => {
        if (options.source) this.push(Object.assign(options.source, { deleted: true, text: "(deleted)", image: undefined, buttons: undefined }));
      },
    };
    void work(conversation, controller.signal).catch((error: unknown) => this.options.log?.(`[web] ${error instanceof Error ? error.message : String(error)}`))
      .finally(() => {
        session.running -= 1;
        this.sessions.touch(session);
        for (const message of written) {
          this.running.delete(message.id);
          if (message.running) this.push(Object.assign(message, { running: false }));
        }
      });
  }

  /** Edits of one posted message; a public one can be reopened after a restart by its id. */
  private handle(posted: ChatMessage): MessageHandle {
    return {
      key: `web:${posted.id}`, ...(posted.audience === undefined ? { address: { message: posted.id } } : {}),
      edit: async (next) => this.push(Object.assign(posted, this.render(next))),
    };
  }

  /** A public message of a job accepted before a restart: the room starts empty, so it is posted again under its id. */
  reopen(address: unknown): MessageHandle | undefined {
    const parsed = webAddress.safeParse(address);
    if (!parsed.success) return undefined;
    const id = parsed.data.message;
    const posted = this.messages.find((message) => message.id === id) ?? { id, author: "bot" as const, text: "" };
    return this.handle(posted);
  }

  /** A BotMessage as the page shows it: images as URLs the server serves, previews inline. */
  private render(message: BotMessage): Omit<ChatMessage, "id" | "author"> {
    let image: string | undefined;
    if (message.image?.data) image = `data:image/png;base64,${message.image.data.toString("base64")}`;
    else if (message.image?.path) {
      const path = relative(join(this.options.dataDir, "generations"), message.image.path).split(sep).join("/");
      image = `/images/${path}`;
    }
    return {
      text: message.text, image, error: message.error || undefined, ephemeral: message.ephemeral || undefined,
      buttons: message.buttons?.map((row) => row.map(({ id, label, style }) => ({ id, label, ...(style ? { style } : {}) }))),
    };
  }

  private async image(generation: string, file: string, response: ServerResponse): Promise<void> {
    const path = join(this.options.dataDir, "generations", generation, file);
    const found = await stat(path).then((info) => info.isFile(), () => false);
    if (!found) return send(response, 404, { error: "no such image" });
    response.writeHead(200, { "content-type": file.endsWith(".webp") ? "image/webp" : "image/png", "cache-control": "max-age=86400, immutable" });
    createReadStream(path).pipe(response);
  }
}

/** A message as sent to the page: who may cancel or see it is the server's business. */
function shown(message: ChatMessage): Omit<ChatMessage, "owner" | "audience"> {
  const { owner: _owner, audience: _audience, ...rest } = message;
  return rest;
}

function newToken(): string {
  return randomBytes(16).toString("hex");
}

function sameSecret(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

function setCookie(response: ServerResponse, id: string): void {
  response.setHeader("set-cookie", `autolora_session=${id}; HttpOnly; SameSite=Strict; Path=/`);
}

async function readJson(request: IncomingMessage): Promise<unknown> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of request) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new RequestTooLargeError(`a request to the web chat is at most ${MAX_BODY_BYTES / 1024} KiB`);
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    return undefined;
  }
}

function asset(response: ServerResponse, type: string, body: string): void {
  response.writeHead(200, { "content-type": type, "cache-control": "no-cache" });
  response.end(body);
}

function send(response: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  response.writeHead(status, { "content-type": "application/json", ...headers });
  response.end(JSON.stringify(body));
}
