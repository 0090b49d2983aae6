// LoRA bytes by hash for GPU workers on other machines: `GET /pool/<sha256>` with the worker token streams the
// stored file (HEAD answers its size). Workers keep what they fetch in a cache checked against the hash
// (autolora_worker/lora_fetch.py), so the host sends each file to each worker about once. Nothing else is served:
// no listing, no names, and nothing at all without the token.
import { createHash, timingSafeEqual } from "node:crypto";
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { LoraStore } from "./store.js";

export interface PoolServerOptions {
  store: Pick<LoraStore, "pathOf">;
  /** The workers' shared bearer token (AUTOLORA_WORKER_TOKEN). */
  token: string;
  host: string;
  /** 0 picks a free port. */
  port: number;
  log?: (line: string) => void;
}

const PATH = /^\/pool\/([0-9a-f]{64})$/;

export class PoolServer {
  private server: Server | undefined;
  private readonly tokenDigest: Buffer;
  /** Where it listens, once started. */
  url: string | undefined;

  constructor(private readonly options: PoolServerOptions) {
    if (!options.token) throw new Error("the pool server needs the workers' token (AUTOLORA_WORKER_TOKEN)");
    this.tokenDigest = digest(options.token);
  }

  async start(): Promise<string> {
    this.server = createServer((request, response) => {
      this.route(request, response).catch((error: unknown) => {
        this.options.log?.(`[pool-server] ${request.method} ${request.url}: ${error instanceof Error ? error.message : String(error)}`);
        if (!response.headersSent) send(response, 500, "internal error");
        else response.destroy();
      });
    });
    await new Promise<void>((resolve, reject) => {
      this.server!.once("error", reject);
      this.server!.listen(this.options.port, this.options.host, () => resolve());
    });
    const address = this.server.address();
    const port = typeof address === "object" && address ? address.port : this.options.port;
    this.url = `http://${this.options.host.includes(":") ? `[${this.options.host}]` : this.options.host}:${port}`;
    this.options.log?.(`[pool-server] LoRA files for remote workers on ${this.url}/pool/<sha256> (worker token required)`);
    return this.url;
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private async route(request: IncomingMessage, response: ServerResponse): Promise<void> {
    if (request.method !== "GET" && request.method !== "HEAD") return send(response, 405, "only GET and HEAD", { allow: "GET, HEAD" });
    if (!this.authorised(request.headers.authorization)) {
      this.options.log?.(`[pool-server] refused ${request.method} ${request.url} from ${request.socket.remoteAddress}: no valid worker token`);
      return send(response, 401, "send the worker token: Authorization: Bearer <AUTOLORA_WORKER_TOKEN>", { "www-authenticate": "Bearer" });
    }
    const match = PATH.exec(new URL(request.url ?? "/", "http://localhost").pathname);
    if (!match) return send(response, 404, "not found: ask for /pool/<sha256> (64 lowercase hex digits)");
    const sha256 = match[1]!;
    const path = this.options.store.pathOf(sha256);
    const info = await stat(path).catch(() => undefined);
    if (!info?.isFile()) return send(response, 404, `this pool has no LoRA ${sha256}`);
    response.writeHead(200, {
      "content-type": "application/octet-stream", "content-length": String(info.size), etag: `"${sha256}"`,
      "cache-control": "private, max-age=31536000, immutable", // the name is the content's hash
    });
    if (request.method === "HEAD") return void response.end();
    await new Promise<void>((resolve, reject) => {
      const file = createReadStream(path);
      file.once("error", reject);
      response.once("close", () => { file.destroy(); resolve(); });
      file.pipe(response);
    });
  }

  private authorised(header: string | undefined): boolean {
    const given = /^Bearer (.+)$/.exec(header ?? "")?.[1];
    return given !== undefined && timingSafeEqual(digest(given), this.tokenDigest);
  }
}

/** Compared as digests: equal lengths for timingSafeEqual, and the token's length is not leaked either. */
function digest(token: string): Buffer {
  return createHash("sha256").update(token).digest();
}

function send(response: ServerResponse, status: number, message: string, headers: Record<string, string> = {}): void {
  response.writeHead(status, { "content-type": "application/json", ...headers });
  response.end(JSON.stringify({ error: message }));
}
