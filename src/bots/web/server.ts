// The local web chat, the embedded default adapter: a page on 127.0.0.1 where a person types the same commands
// as on Discord and watches the answer arrive (Server-Sent Events). Each browser gets a session cookie; admin
// rights come from a one-time link printed at start (like a notebook server's token), never from a name typed in.
import { randomBytes, timingSafeEqual } from "node:crypto";
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { join } from "node:path";
import { z } from "zod";
import type { GenerationStore } from "../../pipeline/generations.js";
import type { ImagineUpdate, ImagineResult } from "../../pipeline/imagine.js";
import type { SearchHit } from "../../pool/index.js";
import { runCommand, type CommandContext, type Reply, type Requester } from "../commands.js";
import type { ChatAdapter } from "../../plugins.js";
import { PAGE } from "./page.js";

export interface WebChatOptions {
  host: string;
  port: number;
  context: CommandContext;
  generations: GenerationStore;
  dataDir: string;
  /** The admin link's secret. Default: random per start. */
  adminToken?: string;
  log?: (line: string) => void;
}

/** One chat message as the page shows it; the server sends the whole message again on every change. */
interface ChatMessage {
  id: string;
  author: "you" | "bot";
  text?: string;
  status?: string;
  preview?: string;
  error?: string;
  loras?: Array<{ name: string; id: string; similarity: number }>;
  images?: { grid: string; webp: string; singles: string[] };
  generation?: string;
  done?: boolean;
}

interface Session {
  requester: Requester;
  messages: ChatMessage[];
  clients: Set<ServerResponse>;
  running: Map<string, AbortController>;
}

const commandBody = z.strictObject({ text: z.string().min(1).max(2000) });
const rateBody = z.strictObject({ generation: z.string().uuid(), value: z.union([z.literal(1), z.literal(-1)]) });
const cancelBody = z.strictObject({ message: z.string().min(1).max(100) });
const IMAGE_PATH = /^\/images\/([0-9a-f-]{36})\/(grid\.png|grid\.webp|\d\.png)$/;
const MAX_MESSAGES = 200;

export class WebChat implements ChatAdapter {
  readonly name = "web";
  private readonly sessions = new Map<string, Session>();
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
    for (const session of this.sessions.values()) {
      for (const controller of session.running.values()) controller.abort();
      for (const client of session.clients) client.end();
    }
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
    if (request.method === "POST" && url.pathname === "/api/rate") {
      const body = rateBody.safeParse(await readJson(request));
      if (!body.success) return send(response, 400, { error: "send {\"generation\": id, \"value\": 1 or -1}" });
      const rated = await this.options.generations.rate(body.data.generation, session.requester.id, body.data.value);
      return send(response, rated ? 200 : 404, rated ? { rated: body.data.value } : { error: "no such generation" });
    }
    if (request.method === "POST" && url.pathname === "/api/cancel") {
      const body = cancelBody.safeParse(await readJson(request));
      const controller = body.success ? session.running.get(body.data.message) : undefined;
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
      requester: { id: `web:${id.slice(0, 12)}`, name: `guest-${id.slice(0, 4)}`, admin: false },
      messages: [], clients: new Set(), running: new Map(),
    };
    this.sessions.set(id, session);
    response.setHeader("set-cookie", `autolora_session=${id}; HttpOnly; SameSite=Strict; Path=/`);
    return session;
  }

  private events(session: Session, response: ServerResponse): void {
    response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store", connection: "keep-alive" });
    response.write(`event: me\ndata: ${JSON.stringify(session.requester)}\n\n`);
    for (const message of session.messages) response.write(`data: ${JSON.stringify(message)}\n\n`);
    session.clients.add(response);
    response.on("close", () => session.clients.delete(response));
  }

  private push(session: Session, message: ChatMessage): void {
    if (!session.messages.includes(message)) {
      session.messages.push(message);
      if (session.messages.length > MAX_MESSAGES) session.messages.shift();
    }
    for (const client of session.clients) client.write(`data: ${JSON.stringify(message)}\n\n`);
  }

  private command(session: Session, text: string): void {
    const id = () => randomBytes(6).toString("hex");
    this.push(session, { id: id(), author: "you", text, done: true });
    const answer: ChatMessage = { id: id(), author: "bot", status: "working…" };
    this.push(session, answer);
    const controller = new AbortController();
    session.running.set(answer.id, controller);
    const update = (change: Partial<ChatMessage>) => this.push(session, Object.assign(answer, change));
    const reply: Reply = {
      text: (message) => update({ text: message, status: undefined, done: true }),
      error: (message) => update({ error: message, status: undefined, preview: undefined, done: true }),
      progress: (progress: ImagineUpdate) => update(describeProgress(progress)),
      loras: (hits: SearchHit[]) => update({ loras: hits.map(summary), status: undefined, done: true,
        text: hits.length ? undefined : "the pool has no LoRAs yet" }),
      result: (result: ImagineResult) => {
        const base = `/images/${result.generation.id}`;
        update({
          status: undefined, preview: undefined, done: true, generation: result.generation.id,
          text: result.generation.prompt, loras: result.loras.map(summary),
          images: { grid: `${base}/grid.png`, webp: `${base}/grid.webp`, singles: result.files.singles.map((_, i) => `${base}/${i + 1}.png`) },
        });
      },
    };
    void runCommand(text, session.requester, this.options.context, reply, controller.signal)
      .finally(() => session.running.delete(answer.id));
  }

  private async image(generation: string, file: string, response: ServerResponse): Promise<void> {
    const path = join(this.options.dataDir, "generations", generation, file);
    const found = await stat(path).then((info) => info.isFile(), () => false);
    if (!found) return send(response, 404, { error: "no such image" });
    response.writeHead(200, { "content-type": file.endsWith(".webp") ? "image/webp" : "image/png", "cache-control": "max-age=86400, immutable" });
    createReadStream(path).pipe(response);
  }
}

function describeProgress(update: ImagineUpdate): Partial<ChatMessage> {
  switch (update.type) {
    case "queued": return { status: `waiting: ${update.position === 1 ? "next in line" : `number ${update.position} in line`}` };
    case "started": return { status: "retrieving LoRAs…" };
    case "retrieved": return { status: "drawing…", loras: update.loras.map(summary) };
    case "progress": return { status: `drawing: step ${update.step} of ${update.total}`, ...(update.preview ? { preview: update.preview } : {}) };
    case "retry": return { status: update.message };
  }
}

function summary(hit: SearchHit) {
  return { name: hit.lora.name, id: hit.lora.id, similarity: Math.round(hit.similarity * 1000) / 1000 };
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
