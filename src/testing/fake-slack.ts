// A local fake Slack for tests and benchmarks: the Web API an unmodified Bolt App talks to (set
// `clientOptions: { slackApiUrl: fake.apiUrl }`), and Slack's side of the wire: signed HTTP requests into a Bolt
// receiver, response_urls, file upload URLs and a Socket Mode WebSocket, with everything the app sends recorded.
import { createHmac, randomUUID } from "node:crypto";
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { WebSocket, WebSocketServer } from "ws";
import {
  FakeSlackWorkspace,
  SlackApiError,
  type FakeSlackFile,
  type FakeSlackMessage,
} from "./fake-slack-workspace.js";
import {
  SlackPayloads,
  type BlockActionInput,
  type BlockSuggestionInput,
  type SlashCommandInput,
} from "./fake-slack-payloads.js";

export type { FakeSlackFile, FakeSlackMessage } from "./fake-slack-workspace.js";
export { DEFAULT_CHANNEL } from "./fake-slack-workspace.js";
export type { BlockActionInput, BlockSuggestionInput, SlashCommandInput, SlackPayloads } from "./fake-slack-payloads.js";

export interface FakeSlackOptions {
  /** The app's signing secret; every request the fake sends to the app is signed with it. */
  signingSecret: string;
  /** The bot token Web API calls must carry. Default: any token (a call with none still gets not_authed). */
  botToken?: string;
  /** The app-level token apps.connections.open must carry (Socket Mode). Default: any token. */
  appToken?: string;
  /** Default: "T0FAKETEAM". */
  teamId?: string;
  /** The bot's user id, which auth.test reports and Bolt's ignoreSelf filters on. Default: "U0FAKEBOT". */
  botUserId?: string;
  /** Users users.info knows, by id; any other id is an invented ordinary user. Default: none. */
  users?: Record<string, { name: string; isAdmin?: boolean }>;
  /** Milliseconds every Web API answer is held back, to imitate the round trip to Slack. Default: 0. */
  apiDelayMs?: number;
}

/** `at` values here are on performance.now()'s clock, so they compare with PostResult.at and with each other. */
export interface RecordedCall {
  /** e.g. "chat.postMessage" */
  method: string;
  /** From a JSON or form body (JSON-encoded fields such as blocks decoded), without the token. */
  args: Record<string, unknown>;
  /** From the Authorization header, else the `token` argument. */
  token?: string;
  at: number;
}

export interface RecordedResponse {
  url: string;
  body: Record<string, unknown>;
  at: number;
}

export interface SocketAck {
  envelopeId: string;
  /** What the app passed to ack(); `{}` for a plain ack(). */
  payload: Record<string, unknown>;
  at: number;
}

/** Lets a test make a stale request (an old timestamp) or a forged one (another secret, or a given signature). */
export interface SigningOverride {
  /** Unix seconds. Default: now. */
  timestamp?: number;
  secret?: string;
  signature?: string;
}

export interface PostResult {
  status: number;
  body: string;
  /** The HTTP round trip: for Bolt with processBeforeResponse false, the time until the handler's ack(). */
  ms: number;
  /** When the request was sent, on performance.now()'s clock. */
  at: number;
}

export type SocketEnvelopeType = "slash_commands" | "events_api" | "interactive";

export interface FakeSlack {
  /** "http://127.0.0.1:PORT/api/": what Bolt's clientOptions.slackApiUrl takes. */
  readonly apiUrl: string;
  readonly teamId: string;
  readonly botUserId: string;
  readonly botId: string;
  readonly appId: string;
  /** Every Web API call, in arrival order. */
  readonly calls: RecordedCall[];
  /** Messages by ts: posted, file shares, in_channel responses; changed in place by updates and deletes. */
  readonly messages: Map<string, FakeSlackMessage>;
  /** Files by id, from files.getUploadURLExternal on. */
  readonly files: Map<string, FakeSlackFile>;
  /** POSTs received on the response_urls this fake handed out: the bodies Bolt's respond() sent. */
  readonly responses: RecordedResponse[];
  /** Acks the app sent back over Socket Mode. */
  readonly socketAcks: SocketAck[];
  /** Builders of the bodies Slack sends, for socketSend() or for requests a test encodes itself. */
  readonly payloads: SlackPayloads;
  /** The first call to `method` matching `predicate`, among those recorded so far or arriving within the timeout. */
  waitForCall(method: string, predicate?: (call: RecordedCall) => boolean, timeoutMs?: number): Promise<RecordedCall>;
  /** The first response_url POST matching `predicate`, already recorded or arriving within the timeout. */
  waitForResponse(predicate?: (response: RecordedResponse) => boolean, timeoutMs?: number): Promise<RecordedResponse>;
  /** Signs `body` (Slack v0) and POSTs it to an app's receiver URL, e.g. http://127.0.0.1:3000/slack/events. */
  post(url: string, body: string, contentType: string, override?: SigningOverride): Promise<PostResult>;
  slashCommand(url: string, input: SlashCommandInput, override?: SigningOverride): Promise<PostResult & { responseUrl: string; triggerId: string }>;
  /** Sends `event` in an event_callback envelope. */
  event(url: string, event: Record<string, unknown>, override?: SigningOverride): Promise<PostResult & { eventId: string }>;
  blockAction(url: string, input: BlockActionInput, override?: SigningOverride): Promise<PostResult & { responseUrl: string; triggerId: string }>;
  /** The HTTP body of the result is the app's ack() answer, e.g. `{"options":[…]}`. */
  blockSuggestion(url: string, input: BlockSuggestionInput, override?: SigningOverride): Promise<PostResult>;
  /** Pushes an envelope to the newest Socket Mode connection and waits for its ack. */
  socketSend(type: SocketEnvelopeType, payload: object, timeoutMs?: number): Promise<{ ackMs: number; ack: Record<string, unknown> }>;
  close(): Promise<void>;
}

const FORM = "application/x-www-form-urlencoded";
/** Arguments that @slack/web-api JSON-encodes in form bodies (it encodes every object or array argument). */
const JSON_ARGUMENTS = new Set(["blocks", "attachments", "files", "metadata"]);
const DEFAULT_WAIT_MS = 2000;
const SOCKET_CLOSE_GRACE_MS = 500;

export async function startFakeSlack(options: FakeSlackOptions): Promise<FakeSlack> {
  const fake = new LocalFakeSlack(options);
  await fake.listen();
  return fake;
}

class LocalFakeSlack implements FakeSlack {
  readonly teamId: string;
  readonly botUserId: string;
  readonly botId = "B0FAKEBOT";
  readonly appId = "A0FAKEAPP";
  readonly calls: RecordedCall[] = [];
  readonly responses: RecordedResponse[] = [];
  readonly socketAcks: SocketAck[] = [];
  readonly payloads: SlackPayloads;
  private readonly workspace: FakeSlackWorkspace;
  private readonly server = createServer((request, response) => {
    this.route(request, response).catch((error: unknown) => {
      if (!response.headersSent) send(response, 500, "text/plain", `fake Slack failed: ${String(error)}`);
    });
  });
  private readonly sockets = new WebSocketServer({ noServer: true });
  /** Re-run after every recorded call, response or ack; each resolves one waiter when its search succeeds. */
  private readonly waiters = new Map<() => void, (error: Error) => void>();
  private baseUrl = "";

  constructor(private readonly options: FakeSlackOptions) {
    this.teamId = options.teamId ?? "T0FAKETEAM";
    this.botUserId = options.botUserId ?? "U0FAKEBOT";
    const identity = { teamId: this.teamId, botUserId: this.botUserId, botId: this.botId, appId: this.appId, users: options.users ?? {} };
    this.workspace = new FakeSlackWorkspace(identity, (fileId) => `${this.baseUrl}/upload/${fileId}`);
    this.payloads = new SlackPayloads(this.workspace, (target) => `${this.baseUrl}/response/${this.workspace.openResponseUrl(target)}`);
    this.server.on("upgrade", (request, socket, head) => {
      if (new URL(request.url ?? "/", this.baseUrl).pathname !== "/socket-mode") {
        socket.destroy();
        return;
      }
      this.sockets.handleUpgrade(request, socket, head, (connection) => this.acceptSocket(connection));
    });
  }

  get apiUrl(): string {
    return `${this.baseUrl}/api/`;
  }

  get messages(): Map<string, FakeSlackMessage> {
    return this.workspace.messages;
  }

  get files(): Map<string, FakeSlackFile> {
    return this.workspace.files;
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(0, "127.0.0.1", () => resolve());
    });
    this.baseUrl = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  waitForCall(method: string, predicate: (call: RecordedCall) => boolean = () => true, timeoutMs = DEFAULT_WAIT_MS): Promise<RecordedCall> {
    return this.waitFor(
      () => this.calls.find((call) => call.method === method && predicate(call)),
      timeoutMs,
      () => `no matching ${method} call; calls so far: ${this.calls.map((call) => call.method).join(", ") || "none"}`,
    );
  }

  waitForResponse(predicate: (response: RecordedResponse) => boolean = () => true, timeoutMs = DEFAULT_WAIT_MS): Promise<RecordedResponse> {
    return this.waitFor(
      () => this.responses.find(predicate),
      timeoutMs,
      () => `no matching response_url POST among ${this.responses.length}`,
    );
  }

  async post(url: string, body: string, contentType: string, override: SigningOverride = {}): Promise<PostResult> {
    const timestamp = override.timestamp ?? Math.floor(Date.now() / 1000);
    const signature = override.signature ?? slackSignature(override.secret ?? this.options.signingSecret, timestamp, body);
    const at = performance.now();
    // node:http rather than fetch: in a burst this client shares the app's event loop, and fetch's streams cost
    // the app about half a millisecond a request that Slack's own servers would spend, not the app.
    const { status, text } = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const outgoing = httpRequest(url, {
        method: "POST",
        headers: {
          "content-type": contentType,
          "content-length": Buffer.byteLength(body),
          "user-agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
          "x-slack-request-timestamp": String(timestamp),
          "x-slack-signature": signature,
        },
      }, (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", () => resolve({ status: response.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") }));
        response.on("error", reject);
      });
      outgoing.on("error", reject);
      outgoing.end(body);
    });
    return { status, body: text, ms: performance.now() - at, at };
  }

  async slashCommand(url: string, input: SlashCommandInput, override?: SigningOverride) {
    const payload = this.payloads.slashCommand(input);
    const result = await this.post(url, new URLSearchParams(payload).toString(), FORM, override);
    return { ...result, responseUrl: payload.response_url, triggerId: payload.trigger_id };
  }

  async event(url: string, event: Record<string, unknown>, override?: SigningOverride) {
    const envelope = this.payloads.event(event);
    const result = await this.post(url, JSON.stringify(envelope), "application/json", override);
    return { ...result, eventId: envelope.event_id };
  }

  async blockAction(url: string, input: BlockActionInput, override?: SigningOverride) {
    const payload = this.payloads.blockAction(input);
    const result = await this.post(url, interactionBody(payload), FORM, override);
    return { ...result, responseUrl: payload.response_url, triggerId: payload.trigger_id };
  }

  blockSuggestion(url: string, input: BlockSuggestionInput, override?: SigningOverride): Promise<PostResult> {
    return this.post(url, interactionBody(this.payloads.blockSuggestion(input)), FORM, override);
  }

  async socketSend(type: SocketEnvelopeType, payload: object, timeoutMs = 3000) {
    const connection = [...this.sockets.clients].filter((client) => client.readyState === WebSocket.OPEN).at(-1);
    if (connection === undefined) throw new Error("fake Slack: no Socket Mode connection is open; start the app first");
    const envelopeId = randomUUID();
    const envelope = {
      envelope_id: envelopeId,
      type,
      payload,
      // Slack takes an answer in the ack for commands and interactions (e.g. block_suggestion options), not events.
      accepts_response_payload: type !== "events_api",
      ...(type === "events_api" && { retry_attempt: 0, retry_reason: "" }),
    };
    const sentAt = performance.now();
    connection.send(JSON.stringify(envelope));
    const ack = await this.waitFor(
      () => this.socketAcks.find((candidate) => candidate.envelopeId === envelopeId),
      timeoutMs,
      () => `no ack for ${type} envelope ${envelopeId}`,
    );
    return { ackMs: ack.at - sentAt, ack: ack.payload };
  }

  /**
   * Bolt's SocketModeReceiver.stop() returns before its close handshake ends, so open sockets get a moment to
   * finish it (a cut socket makes the client log a WebSocket error) before they are cut.
   */
  async close(): Promise<void> {
    for (const fail of this.waiters.values()) fail(new Error("fake Slack closed while waiting"));
    await Promise.all(
      [...this.sockets.clients].map(async (connection) => {
        const closed = new Promise((resolve) => connection.once("close", resolve));
        if (connection.readyState === WebSocket.OPEN) connection.close(1001, "fake Slack closing");
        await Promise.race([closed, sleep(SOCKET_CLOSE_GRACE_MS)]);
        connection.terminate();
      }),
    );
    this.sockets.close();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async route(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const url = new URL(request.url ?? "/", this.baseUrl);
    const [, kind, id = ""] = url.pathname.split("/");
    const raw = await readBody(request);
    if (kind === "api") return this.answerApi(id, url, request, raw, response);
    if (kind === "upload" && request.method === "POST") return this.answerUpload(id, request, raw, response);
    if (kind === "response" && request.method === "POST") return this.answerResponseUrl(url, raw, response);
    send(response, 404, "text/plain", "not found");
  }

  /**
   * One Web API call. Slack answers HTTP 200 with `ok: false` for every error, and so does the fake: a non-200
   * makes @slack/web-api retry for up to half an hour, which would stall a test instead of failing it.
   */
  private async answerApi(method: string, url: URL, request: IncomingMessage, raw: Buffer, response: ServerResponse): Promise<void> {
    let answer: Record<string, unknown>;
    try {
      const args = { ...Object.fromEntries(url.searchParams), ...(await parseArguments(request, raw)) };
      const token = bearerToken(request) ?? (typeof args.token === "string" ? args.token : undefined);
      delete args.token;
      this.record(this.calls, { method, args, ...(token !== undefined && { token }), at: performance.now() });
      this.checkToken(method, token);
      answer = { ok: true, ...(method === "apps.connections.open" ? { url: this.socketUrl() } : this.workspace.call(method, args)) };
    } catch (error) {
      answer = error instanceof SlackApiError ? errorAnswer(error) : { ok: false, error: "fatal_error", detail: String(error) };
    }
    if (this.options.apiDelayMs) await sleep(this.options.apiDelayMs);
    send(response, 200, "application/json; charset=utf-8", JSON.stringify(answer));
  }

  /** apps.connections.open takes only the app-level token; every other method only the bot token. */
  private checkToken(method: string, token: string | undefined): void {
    if (token === undefined || token === "") throw new SlackApiError("not_authed");
    const { appToken, botToken } = this.options;
    const [expected, other] = method === "apps.connections.open" ? [appToken, botToken] : [botToken, appToken];
    if (other !== undefined && token === other) throw new SlackApiError("not_allowed_token_type");
    if (expected !== undefined && token !== expected) throw new SlackApiError("invalid_auth");
  }

  /** @slack/web-api 8 POSTs the bytes as multipart/form-data (one file part); raw bodies are taken as they come. */
  private async answerUpload(fileId: string, request: IncomingMessage, raw: Buffer, response: ServerResponse): Promise<void> {
    let data = raw;
    const contentType = request.headers["content-type"] ?? "";
    if (contentType.startsWith("multipart/form-data")) {
      const form = await new Response(new Uint8Array(raw), { headers: { "content-type": contentType } }).formData();
      const part = [...form.values()].find((value) => typeof value !== "string");
      if (part === undefined || typeof part === "string") return send(response, 400, "text/plain", "no file part");
      data = Buffer.from(await part.arrayBuffer());
    }
    if (!this.workspace.receiveUpload(fileId, data)) return send(response, 404, "text/plain", "unknown upload");
    send(response, 200, "text/plain", `OK - ${data.length}`);
  }

  private answerResponseUrl(url: URL, raw: Buffer, response: ServerResponse): void {
    const id = url.pathname.split("/")[2] ?? "";
    let body: unknown;
    try {
      body = JSON.parse(raw.toString("utf8"));
    } catch {
      return send(response, 400, "text/plain", "invalid_json");
    }
    if (typeof body !== "object" || body === null || Array.isArray(body)) return send(response, 400, "text/plain", "invalid_payload");
    const fields = body as Record<string, unknown>;
    if (!this.workspace.respond(id, fields)) return send(response, 404, "text/plain", "no such response_url");
    this.record(this.responses, { url: url.href, body: fields, at: performance.now() });
    send(response, 200, "application/json", JSON.stringify({ ok: true }));
  }

  /** Slack greets a new Socket Mode connection with hello; the client then answers each envelope with an ack. */
  private acceptSocket(connection: WebSocket): void {
    connection.on("message", (data) => {
      let message: { envelope_id?: unknown; payload?: unknown };
      try {
        message = JSON.parse(data.toString()) as typeof message;
      } catch {
        return;
      }
      if (typeof message.envelope_id !== "string") return;
      const payload = typeof message.payload === "object" && message.payload !== null ? (message.payload as Record<string, unknown>) : {};
      this.record(this.socketAcks, { envelopeId: message.envelope_id, payload, at: performance.now() });
    });
    connection.send(
      JSON.stringify({
        type: "hello",
        num_connections: this.sockets.clients.size,
        debug_info: { host: "fake-slack", approximate_connection_time: 3600 },
        connection_info: { app_id: this.appId },
      }),
    );
  }

  private socketUrl(): string {
    return `${this.baseUrl.replace("http://", "ws://")}/socket-mode?ticket=${randomUUID()}`;
  }

  private record<T>(list: T[], entry: T): void {
    list.push(entry);
    for (const check of [...this.waiters.keys()]) check();
  }

  private waitFor<T>(find: () => T | undefined, timeoutMs: number, describe: () => string): Promise<T> {
    const found = find();
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const stop = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      const check = () => {
        const value = find();
        if (value === undefined) return;
        stop();
        resolve(value);
      };
      const timer = setTimeout(() => {
        stop();
        reject(new Error(`fake Slack: after ${timeoutMs} ms, ${describe()}`));
      }, timeoutMs);
      this.waiters.set(check, (error) => {
        stop();
        reject(error);
      });
    });
  }
}

/** Slack's v0 request signature: `v0=` + hex HMAC-SHA256 of `v0:<timestamp>:<body>` under the signing secret. */
export function slackSignature(signingSecret: string, timestamp: number, body: string): string {
  return `v0=${createHmac("sha256", signingSecret).update(`v0:${timestamp}:${body}`).digest("hex")}`;
}

/** Interactions arrive form-encoded with the JSON in one `payload` field. */
function interactionBody(payload: object): string {
  return new URLSearchParams({ payload: JSON.stringify(payload) }).toString();
}

async function readBody(request: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of request) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Web API arguments from a JSON, urlencoded or multipart body; form values that are JSON-encoded come back decoded. */
async function parseArguments(request: IncomingMessage, raw: Buffer): Promise<Record<string, unknown>> {
  if (raw.length === 0) return {};
  const contentType = request.headers["content-type"] ?? "";
  if (contentType.startsWith("application/json")) {
    try {
      return JSON.parse(raw.toString("utf8")) as Record<string, unknown>;
    } catch {
      throw new SlackApiError("invalid_json");
    }
  }
  const form = await new Response(new Uint8Array(raw), { headers: { "content-type": contentType || FORM } }).formData();
  const args: Record<string, unknown> = {};
  for (const [key, value] of form) {
    if (typeof value !== "string") args[key] = Buffer.from(await value.arrayBuffer());
    else if (!JSON_ARGUMENTS.has(key)) args[key] = value;
    else {
      try {
        args[key] = JSON.parse(value);
      } catch {
        throw new SlackApiError(key === "blocks" ? "invalid_blocks_format" : "invalid_arguments", [`[ERROR] ${key} is not JSON`]);
      }
    }
  }
  return args;
}

function bearerToken(request: IncomingMessage): string | undefined {
  const match = /^Bearer (.+)$/.exec(request.headers.authorization ?? "");
  return match?.[1];
}

function errorAnswer(error: SlackApiError): Record<string, unknown> {
  return {
    ok: false,
    error: error.code,
    ...(error.messages.length > 0 && { response_metadata: { messages: error.messages } }),
  };
}

function send(response: ServerResponse, status: number, contentType: string, body: string): void {
  response.writeHead(status, { "content-type": contentType });
  response.end(body);
}
