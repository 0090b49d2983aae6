// The local web chat, the embedded default adapter: a page on 127.0.0.1 where people type the same commands as
// on Discord and watch the answers arrive (Server-Sent Events). Like a channel, it is one room everybody sees;
// answers only for the asker (refusals, ℹ️) go to that session alone. Each browser gets a session cookie; admin
// rights come from a one-time link printed at start (like a notebook server's token), never from a name typed in.
import { randomBytes, timingSafeEqual } from "node:crypto";
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { join } from "node:path";
import { z } from "zod";
import { relative, sep } from "node:path";
import type { Requester } from "../commands.js";
import type { ChatCore, Conversation, MessageHandle } from "../core.js";
import type { BotMessage } from "../messages.js";
import type { ChatAdapter } from "../../plugins.js";
import { PAGE } from "./page.js";

export interface WebChatOptions {
  host: string;
  port: number;
  core: ChatCore;
  dataDir: string;
  /** The admin link's secret. Default: random per start. */
  adminToken?: string;
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
  /** Ephemeral messages: the only session that sees them. */
  audience?: string;
}

interface Session {
  id: string;
  requester: Requester;
  clients: Set<ServerResponse>;
}

const commandBody = z.strictObject({ text: z.string().min(1).max(2000) });
const pressBody = z.strictObject({ message: z.string().min(1).max(100), button: z.string().min(1).max(100) });
const reactBody = z.strictObject({ message: z.string().min(1).max(100), emoji: z.string().min(1).max(64), removed: z.boolean().optional() });
const cancelBody = z.strictObject({ message: z.string().min(1).max(100) });
const IMAGE_PATH = /^\/images\/([0-9a-f-]{36})\/(grid\.png|grid\.webp|\d\.png)$/;
const MAX_MESSAGES = 200;

export class WebChat implements ChatAdapter {
  readonly name = "web";
  private readonly sessions = new Map<string, Session>();
  /** The room: the last MAX_MESSAGES messages, oldest first. */
  private readonly messages: ChatMessage[] = [];
  private readonly running = new Map<string, AbortController>();
  private readonly adminToken: string;
  private server: Server | undefined;
  /** Where it listens, once started. */
  url: string | undefined;

  constructor(private readonly options: WebChatOptions) {
    this.adminToken = options.adminToken ?? randomBytes(16).toString("hex");
  }

  /** Listen; resolves to the URL (and the admin link, to print for the person who started it). */
  async start(): Promise<{ url: string; adminUrl: string }> {
    this.server = createServer((request, response) => {
      this.route(request, response).catch((error: unknown) => {
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
    const url = `http://${this.options.host}:${port}`;
    this.url = url;
    this.options.log?.(`[web] chat on ${url}; admin link (keep it private): ${url}/admin?token=${this.adminToken}`);
    return { url, adminUrl: `${url}/admin?token=${this.adminToken}` };
  }

  async stop(): Promise<void> {
    for (const controller of this.running.values()) controller.abort();
    for (const session of this.sessions.values()) for (const client of session.clients) client.end();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  private async route(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const url = new URL(request.url ?? "/", "http://localhost");
    if (request.method === "POST" && !sameOrigin(request)) return send(response, 403, { error: "cross-site request refused" });
    const session = this.session(request, response);
    if (request.method === "GET" && url.pathname === "/") {
      response.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
      return void response.end(PAGE);
    }
    if (request.method === "GET" && url.pathname === "/admin") {
      const given = Buffer.from(url.searchParams.get("token") ?? "");
      const expected = Buffer.from(this.adminToken);
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
        return send(response, 403, { error: "wrong admin link" });
      }
      session.requester.admin = true;
      response.writeHead(303, { location: "/" });
      return void response.end();
    }
    if (request.method === "GET" && url.pathname === "/api/events") return this.events(session, response);
    if (request.method === "GET" && url.pathname === "/api/me") return send(response, 200, session.requester);
    if (request.method === "POST" && url.pathname === "/api/command") {
      const body = commandBody.safeParse(await readJson(request));
      if (!body.success) return send(response, 400, { error: "send {\"text\": \"/imagine …\"}" });
      this.command(session, body.data.text);
      return send(response, 202, { accepted: true });
    }
    if (request.method === "POST" && url.pathname === "/api/press") {
      const body = pressBody.safeParse(await readJson(request));
      const source = body.success ? this.messages.find((message) => message.id === body.data.message && message.author === "bot" && this.visible(message, session)) : undefined;
      if (!body.success || !source) return send(response, 400, { error: "send {\"message\": id, \"button\": id} for a message of this chat" });
      this.run(session, (conversation, signal) => this.options.core.press(body.data.button, session.requester, conversation, signal), source);
      return send(response, 202, { accepted: true });
    }
    if (request.method === "POST" && url.pathname === "/api/react") {
      const body = reactBody.safeParse(await readJson(request));
      if (!body.success) return send(response, 400, { error: "send {\"message\": id, \"emoji\": \"👍\"}" });
      const outcome = await this.options.core.react(`web:${body.data.message}`, session.requester, body.data.emoji, body.data.removed);
      return send(response, outcome === "ignored" ? 404 : 200, { outcome });
    }
    if (request.method === "POST" && url.pathname === "/api/cancel") {
      const body = cancelBody.safeParse(await readJson(request));
      const owned = body.success ? this.messages.find((message) => message.id === body.data.message) : undefined;
      const controller = owned && (owned.owner === session.id || session.requester.admin) ? this.running.get(owned.id) : undefined;
      controller?.abort();
      return send(response, controller ? 200 : 404, controller ? { cancelling: true } : { error: "nothing running under that message" });
    }
    const image = request.method === "GET" ? IMAGE_PATH.exec(url.pathname) : null;
    if (image) return this.image(image[1]!, image[2]!, response);
    send(response, 404, { error: "not found" });
  }

  private session(request: IncomingMessage, response: ServerResponse): Session {
    const cookie = /(?:^|;\s*)autolora_session=([0-9a-f]{32})/.exec(request.headers.cookie ?? "")?.[1];
    const existing = cookie ? this.sessions.get(cookie) : undefined;
    if (existing) return existing;
    const id = randomBytes(16).toString("hex");
    const session: Session = {
      id, requester: this.options.core.requester({ adapter: "web", userId: id.slice(0, 12), name: `guest-${id.slice(0, 4)}` }), clients: new Set(),
    };
    this.sessions.set(id, session);
    response.setHeader("set-cookie", `autolora_session=${id}; HttpOnly; SameSite=Strict; Path=/`);
    return session;
  }

  private events(session: Session, response: ServerResponse): void {
    response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store", connection: "keep-alive" });
    response.write(`event: me\ndata: ${JSON.stringify(session.requester)}\n\n`);
    for (const message of this.messages) if (this.visible(message, session)) response.write(`data: ${JSON.stringify(shown(message))}\n\n`);
    session.clients.add(response);
    response.on("close", () => session.clients.delete(response));
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
    for (const session of this.sessions.values()) {
      if (this.visible(message, session)) for (const client of session.clients) client.write(data);
    }
  }

  private command(session: Session, text: string): void {
    this.push({ id: randomBytes(6).toString("hex"), author: "you", text: `${session.requester.name}: ${text}`, owner: session.id });
    this.run(session, (conversation, signal) => this.options.core.handleText(text, session.requester, conversation, signal));
  }

  /** Run a command or button press with a conversation that writes bot messages into this session. */
  private run(session: Session, work: (conversation: Conversation, signal: AbortSignal) => Promise<void>, source?: ChatMessage): void {
    const controller = new AbortController();
    const written: ChatMessage[] = [];
    const conversation: Conversation = {
      answer: async (message) => {
        const posted: ChatMessage = {
          id: randomBytes(6).toString("hex"), author: "bot", text: "", running: true, owner: session.id,
          ...(message.ephemeral ? { audience: session.id } : {}),
        };
        written.push(posted);
        this.running.set(posted.id, controller);
        this.push(Object.assign(posted, this.render(message)));
        const handle: MessageHandle = { key: `web:${posted.id}`, edit: async (next) => this.push(Object.assign(posted, this.render(next))) };
        return handle;
      },
      removeSource: async () => {
        if (source) this.push(Object.assign(source, { deleted: true, text: "(deleted)", image: undefined, buttons: undefined }));
      },
    };
    void work(conversation, controller.signal).catch((error: unknown) => this.options.log?.(`[web] ${error instanceof Error ? error.message : String(error)}`))
      .finally(() => {
        for (const message of written) {
          this.running.delete(message.id);
          if (message.running) this.push(Object.assign(message, { running: false }));
        }
      });
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

/** A message as sent to the page: who may cancel it is the server's business. */
function shown(message: ChatMessage): Omit<ChatMessage, "owner" | "audience"> {
  const { owner: _owner, audience: _audience, ...rest } = message;
  return rest;
}

/** Browsers send Origin on POST; a request from another site (or with no Origin) must not act for the session. */
function sameOrigin(request: IncomingMessage): boolean {
  const origin = request.headers.origin;
  return origin !== undefined && origin === `http://${request.headers.host}`;
}

async function readJson(request: IncomingMessage): Promise<unknown> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of request) {
    size += (chunk as Buffer).length;
    if (size > 16_384) return undefined;
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    return undefined;
  }
}

function send(response: ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { "content-type": "application/json" });
  response.end(JSON.stringify(body));
}
