// A browser's side of the web chat for tests: HTTP requests and the Server-Sent Events stream, each from a chosen
// loopback address (127.0.0.2, 127.0.0.3, …), so one machine can play several guests the way the server sees them.
import { request, type IncomingHttpHeaders, type IncomingMessage } from "node:http";

/** A chat message as the page receives it. */
export interface Shown {
  id: string;
  author: string;
  text: string;
  image?: string;
  buttons?: Array<Array<{ id: string; label: string }>>;
  error?: boolean;
  ephemeral?: boolean;
  deleted?: boolean;
  running?: boolean;
}

export interface WebRequest {
  method?: string;
  headers?: Record<string, string>;
  /** Sent as JSON (with content-type); a string is sent as it is. */
  body?: unknown;
  /** The local address to connect from (any 127.x.y.z works on Linux loopback). */
  from?: string;
}

export interface WebResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  text: string;
  /** `name=value` of the session cookie the response set, if it set one. */
  cookie?: string;
}

function send(url: string, options: WebRequest): Promise<IncomingMessage> {
  const target = new URL(url);
  const body = options.body === undefined ? undefined : typeof options.body === "string" ? options.body : JSON.stringify(options.body);
  const headers: Record<string, string> = { ...(body !== undefined && typeof options.body !== "string" ? { "content-type": "application/json" } : {}), ...options.headers };
  return new Promise((resolve, reject) => {
    const outgoing = request({
      host: target.hostname.replace(/^\[|\]$/g, ""), port: target.port, path: `${target.pathname}${target.search}`,
      method: options.method ?? (body === undefined ? "GET" : "POST"), headers, localAddress: options.from,
    }, resolve);
    outgoing.on("error", reject);
    outgoing.end(body);
  });
}

/** One request, read to the end. */
export async function webRequest(url: string, options: WebRequest = {}): Promise<WebResponse> {
  const response = await send(url, options);
  const chunks: Buffer[] = [];
  for await (const chunk of response) chunks.push(chunk as Buffer);
  const body = Buffer.concat(chunks);
  return { status: response.statusCode!, headers: response.headers, body, text: body.toString("utf8"), cookie: sessionCookie(response.headers) };
}

function sessionCookie(headers: IncomingHttpHeaders): string | undefined {
  return headers["set-cookie"]?.map((line) => line.split(";")[0]!).find((pair) => pair.startsWith("autolora_session="));
}

/** A page's event stream: every message it was sent, the latest copy of each, and everything received as text. */
export class EventStream {
  readonly messages = new Map<string, Shown>();
  /** Message ids in the order they first arrived. */
  readonly order: string[] = [];
  /** Each message's texts, one per change. */
  readonly history = new Map<string, string[]>();
  /** Every byte received, to check what was never sent. */
  raw = "";
  me: { id: string; name: string; admin: boolean } | undefined;
  status = 0;
  headers: IncomingHttpHeaders = {};
  cookie: string | undefined;
  private response: IncomingMessage | undefined;

  private constructor(private readonly onMessage?: (message: Shown) => void) {}

  /** Open `/api/events` with `cookie` (none: the server may make a session and set its cookie). */
  static async open(url: string, options: { cookie?: string; from?: string; headers?: Record<string, string>; onMessage?: (message: Shown) => void } = {}): Promise<EventStream> {
    const stream = new EventStream(options.onMessage);
    const response = await send(`${url}/api/events`, { from: options.from, headers: { ...(options.cookie ? { cookie: options.cookie } : {}), ...options.headers } });
    stream.response = response;
    stream.status = response.statusCode!;
    stream.headers = response.headers;
    stream.cookie = sessionCookie(response.headers) ?? options.cookie;
    let buffer = "";
    response.setEncoding("utf8");
    response.on("data", (chunk: string) => {
      stream.raw += chunk;
      buffer += chunk;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        stream.event(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    });
    response.on("error", () => undefined);
    return stream;
  }

  private event(block: string): void {
    const lines = block.split("\n");
    const kind = lines.find((line) => line.startsWith("event: "))?.slice(7);
    const data = lines.find((line) => line.startsWith("data: "))?.slice(6);
    if (data === undefined) return;
    if (kind === "me") return void (this.me = JSON.parse(data));
    const message = JSON.parse(data) as Shown;
    if (!this.messages.has(message.id)) this.order.push(message.id);
    this.messages.set(message.id, message);
    const texts = this.history.get(message.id) ?? [];
    if (texts.at(-1) !== message.text) texts.push(message.text);
    this.history.set(message.id, texts);
    this.onMessage?.(message);
  }

  /** The latest copy of each message, in the order they arrived. */
  list(): Shown[] {
    return this.order.map((id) => this.messages.get(id)!);
  }

  /** Wait until a message passes `test`; fails with what arrived. */
  async waitFor(test: (message: Shown) => boolean, timeoutMs = 20_000): Promise<Shown> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const found = this.list().find(test);
      if (found) return found;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    throw new Error(`no message matched within ${timeoutMs} ms; got ${JSON.stringify(this.list().map((message) => message.text.slice(0, 100)))}`);
  }

  close(): void {
    this.response?.destroy();
  }
}
