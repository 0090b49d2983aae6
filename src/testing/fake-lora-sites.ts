// Local stand-ins for Civitai and the Hugging Face Hub, for crawl tests and the crawl benchmark: the same routes,
// pagination (Civitai's metadata.nextCursor, the Hub's Link header), hashes and redirects to a download host as
// the real sites, serving real (small, proving-ground) safetensors LoRAs. Faults are injected per LoRA number.
import { createHash } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { diffusersLora } from "./safetensors.js";

export interface FakeSiteOptions {
  /** How many LoRAs the site lists, newest (highest number) first. */
  count: number;
  /** Per page (Civitai models, Hub repositories). Default 10. */
  pageSize?: number;
  /** LoRA numbers whose stated sha256 is wrong. */
  wrongHash?: number[];
  /** LoRA numbers whose file is bigger than stated and than `oversizeBytes`. */
  oversized?: number[];
  oversizeBytes?: number;
  /** LoRA numbers whose download URL points at a private address (10.0.0.8) or is plain http to another host. */
  privateUrl?: number[];
  httpUrl?: number[];
  /** Answer the first listing request with 429 and this Retry-After (seconds). */
  rateLimitFirstListing?: number;
  /** LoRA numbers whose first download answers 429 with Retry-After: 3. */
  rateLimitDownloads?: number[];
  /** Require this bearer token on every request. */
  token?: string;
  /** The bytes of LoRA n, instead of a generated one (e.g. the proving-ground bundle's real LoRAs). */
  files?: (n: number) => Buffer;
}

export interface FakeSite {
  url: string;
  /** Every request, as "METHOD path?query". */
  requests: string[];
  /** The bytes of LoRA number n. */
  file(n: number): Buffer;
  close(): Promise<void>;
}

/** LoRA n's bytes: a valid proving-ground LoRA, unique by its metadata. */
function loraBytes(n: number, site: string): Buffer {
  return diffusersLora(192, 4, 1, { site, lora: String(n) });
}

const sha256 = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");

async function serve(handler: (request: IncomingMessage, response: ServerResponse, url: URL) => void, options: FakeSiteOptions,
  site: string): Promise<FakeSite> {
  const requests: string[] = [];
  const server: Server = createServer((request, response) => {
    const url = new URL(request.url ?? "/", "http://fake");
    requests.push(`${request.method} ${url.pathname}${url.search}`);
    if (options.token && request.headers.authorization !== `Bearer ${options.token}`) {
      return void response.writeHead(401, { "content-type": "application/json" }).end(JSON.stringify({ error: "Unauthorized" }));
    }
    handler(request, response, url);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    file: (n) => options.files?.(n) ?? loraBytes(n, site),
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

function json(response: ServerResponse, body: unknown, headers: Record<string, string> = {}): void {
  response.writeHead(200, { "content-type": "application/json", ...headers }).end(JSON.stringify(body));
}

/** The file of LoRA n, with its faults; `stated` is what the listing says about it. */
function fileOf(n: number, options: FakeSiteOptions, site: string): { bytes: Buffer; stated: { sha256: string; size: number } } {
  const real = options.files?.(n) ?? loraBytes(n, site);
  const bytes = options.oversized?.includes(n) ? Buffer.concat([real, Buffer.alloc(options.oversizeBytes ?? 2_000_000)]) : real;
  return { bytes, stated: { sha256: options.wrongHash?.includes(n) ? sha256(Buffer.from(`not ${n}`)) : sha256(bytes), size: real.length } };
}

function limitedOnce(options: FakeSiteOptions) {
  let limited = false;
  return (response: ServerResponse) => {
    if (options.rateLimitFirstListing === undefined || limited) return false;
    limited = true;
    response.writeHead(429, { "retry-after": String(options.rateLimitFirstListing), "content-type": "application/json" })
      .end(JSON.stringify({ error: "Too Many Requests" }));
    return true;
  };
}

/** Civitai: GET /api/v1/models (cursor pagination), GET /api/download/models/:version → 307 → /files/:n.safetensors. */
export async function startFakeCivitai(options: FakeSiteOptions): Promise<FakeSite> {
  const pageSize = options.pageSize ?? 10;
  const rateLimited = limitedOnce(options);
  const limitedDownloads = new Set<number>();
  let base = "";
  const site = await serve((_request, response, url) => {
    if (url.pathname === "/api/v1/models") {
      if (rateLimited(response)) return;
      if (url.searchParams.get("types") !== "LORA") return json(response, { items: [], metadata: {} });
      const start = Number(url.searchParams.get("cursor") ?? options.count);
      const numbers = Array.from({ length: Math.min(pageSize, start) }, (_, i) => start - i);
      const last = numbers.at(-1) ?? 0;
      return json(response, {
        items: numbers.map((n) => {
          const { stated } = fileOf(n, options, "civitai");
          const downloadUrl = options.privateUrl?.includes(n) ? `https://10.0.0.8/api/download/models/${9000 + n}`
            : options.httpUrl?.includes(n) ? `http://downloads.example.com/api/download/models/${9000 + n}`
            : `${base}/api/download/models/${9000 + n}`;
          return {
            id: 1000 + n, name: `Style ${n}`, type: "LORA", nsfw: false, nsfwLevel: n % 7 === 0 ? 8 : 1,
            tags: ["style", { name: `series-${n % 3}` }], allowCommercialUse: ["Image"], allowDerivatives: true,
            creator: { username: "fake" },
            modelVersions: [{
              id: 9000 + n, name: "v1", baseModel: "Flux.1 D", trainedWords: [`style${n}`],
              files: [
                { name: `style-${n}.safetensors`, sizeKB: stated.size / 1024, type: "Model", primary: true, downloadUrl,
                  hashes: { AutoV2: stated.sha256.slice(0, 10).toUpperCase(), SHA256: stated.sha256.toUpperCase() }, metadata: { format: "SafeTensor", fp: "fp16" } },
                { name: `style-${n}-training-data.zip`, sizeKB: 10, type: "Training Data", downloadUrl: `${base}/training/${n}.zip`, hashes: {} },
              ],
              images: [{ url: `${base}/img/${n}.jpeg`, nsfwLevel: 1, meta: { prompt: `a lighthouse in style${n}, dusk`, seed: n } }],
            }, { id: 90000 + n, name: "sdxl port", baseModel: "SDXL 1.0", files: [], images: [] }],
          };
        }),
        metadata: last > 1 ? { nextCursor: String(last - 1), nextPage: `${base}/api/v1/models?cursor=${last - 1}` } : {},
      });
    }
    const download = /^\/api\/download\/models\/(\d+)$/.exec(url.pathname);
    if (download) return void response.writeHead(307, { location: `${base}/files/${Number(download[1]) - 9000}.safetensors` }).end();
    const file = /^\/files\/(\d+)\.safetensors$/.exec(url.pathname);
    if (file && options.rateLimitDownloads?.includes(Number(file[1])) && !limitedDownloads.has(Number(file[1]))) {
      limitedDownloads.add(Number(file[1]));
      return void response.writeHead(429, { "retry-after": "3" }).end();
    }
    if (file) {
      const { bytes } = fileOf(Number(file[1]), options, "civitai");
      return void response.writeHead(200, { "content-type": "application/octet-stream", "content-length": bytes.length }).end(bytes);
    }
    response.writeHead(404, { "content-type": "application/json" }).end(JSON.stringify({ error: "Not found" }));
  }, options, "civitai");
  base = site.url;
  return site;
}

/** The Hub: GET /api/models (Link pagination), /api/models/:repo, /api/models/:repo/tree/:rev, /:repo/resolve/:rev/:path → 302 → CDN. */
export async function startFakeHub(options: FakeSiteOptions): Promise<FakeSite> {
  const pageSize = options.pageSize ?? 10;
  const rateLimited = limitedOnce(options);
  let base = "";
  const repoNumber = (owner: string, name: string) => owner === "painter" && /^flux-style-\d+$/.test(name) ? Number(name.split("-").at(-1)) : undefined;
  const site = await serve((_request, response, url) => {
    if (url.pathname === "/api/models") {
      if (rateLimited(response)) return;
      const start = Number(url.searchParams.get("cursor") ?? options.count);
      const numbers = Array.from({ length: Math.min(pageSize, start) }, (_, i) => start - i);
      const last = numbers.at(-1) ?? 0;
      const next = new URL(url.href.replace("http://fake", base));
      next.searchParams.set("cursor", String(last - 1));
      return json(response, numbers.map((n) => ({ id: `painter/flux-style-${n}`, likes: n, tags: ["lora", `base_model:adapter:${url.searchParams.get("filter")?.split(":").slice(2).join(":")}`] })),
        last > 1 ? { link: `<${next.href}>; rel="next"` } : {});
    }
    const api = /^\/api\/models\/([\w.-]+)\/([\w.-]+)(\/tree\/([\w.-]+))?$/.exec(url.pathname);
    if (api) {
      const n = repoNumber(api[1]!, api[2]!);
      if (n === undefined || n < 1 || n > options.count) return void response.writeHead(404).end(JSON.stringify({ error: "Repository not found" }));
      const revision = `${n.toString(16).padStart(8, "0")}${"0".repeat(32)}`;
      if (!api[3]) {
        return json(response, {
          id: `painter/flux-style-${n}`, sha: revision, tags: ["lora", "diffusers", "template:sd-lora", "license:other", ...(n % 9 === 0 ? ["not-for-all-audiences"] : [])],
          cardData: { license: "other", instance_prompt: `style${n}`, widget: [{ text: `a teapot, style${n}`, output: { url: "images/1.png" } }] },
        });
      }
      const { stated } = fileOf(n, options, "hub");
      return json(response, [
        { type: "file", path: "README.md", size: 200, oid: "a".repeat(40) },
        { type: "file", path: `flux-style-${n}.safetensors`, size: stated.size, oid: "b".repeat(40), lfs: { oid: stated.sha256, size: stated.size, pointerSize: 134 } },
        { type: "directory", path: "images", size: 0, oid: "c".repeat(40) },
      ]);
    }
    const resolve = /^\/painter\/flux-style-(\d+)\/resolve\/[\w.-]+\/flux-style-\d+\.safetensors$/.exec(url.pathname);
    if (resolve) {
      const n = Number(resolve[1]);
      const target = options.privateUrl?.includes(n) ? "https://10.0.0.8/cdn/x" : options.httpUrl?.includes(n) ? "http://cdn.example.com/x" : `${base}/cdn/${n}`;
      return void response.writeHead(302, { location: target }).end();
    }
    const cdn = /^\/cdn\/(\d+)$/.exec(url.pathname);
    if (cdn) {
      const { bytes } = fileOf(Number(cdn[1]), options, "hub");
      return void response.writeHead(200, { "content-type": "application/octet-stream", "content-length": bytes.length }).end(bytes);
    }
    response.writeHead(404).end();
  }, options, "hub");
  base = site.url;
  return site;
}
