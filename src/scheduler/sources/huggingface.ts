// The Hugging Face Hub as a crawl source: models listed with the `base_model:adapter:<base>` filter, newest
// first, pages linked by the Link header; per repository its tree (each .safetensors file with its LFS sha256)
// and its model card (widget prompts and the instance prompt become captions; licence and tags carry over).
// Files download from /<repo>/resolve/<revision>/<path>.
import { z } from "zod";
import { getJson, type RetryOptions } from "../http.js";
import type { CrawlCandidate, CrawlPage, CrawlSource } from "../source.js";

export interface HuggingFaceOptions {
  /** https://huggingface.co, or a mirror. */
  baseUrl: string;
  /** The base model whose adapters to list, e.g. black-forest-labs/FLUX.1-dev. */
  baseModel: string;
  /** Repositories per page. Default 50. */
  pageSize?: number;
  token?: string;
  /** .safetensors files per repository at most (some hold every checkpoint of a run). Default 4. */
  filesPerRepo?: number;
  retry?: RetryOptions;
}

const listed = z.array(z.object({ id: z.string(), tags: z.array(z.string()).default([]) }).passthrough());
const tree = z.array(z.object({
  type: z.string(), path: z.string(), size: z.number().optional(),
  lfs: z.object({ oid: z.string(), size: z.number().optional() }).passthrough().optional(),
}).passthrough());
const info = z.object({
  id: z.string().optional(),
  sha: z.string().optional(),
  tags: z.array(z.string()).default([]),
  cardData: z.object({
    license: z.string().nullish(),
    instance_prompt: z.string().nullish(),
    widget: z.array(z.object({ text: z.string().nullish() }).passthrough()).nullish(),
  }).passthrough().nullish(),
}).passthrough();

export class HuggingFaceSource implements CrawlSource {
  readonly name = "huggingface";

  constructor(private readonly options: HuggingFaceOptions) {
    if (!/^https?:\/\//.test(options.baseUrl)) throw new Error(`the Hugging Face base URL must be http(s), not ${options.baseUrl}`);
    if (!/^[\w.-]+\/[\w.-]+$/.test(options.baseModel)) throw new Error(`the base model must be "owner/name", not ${options.baseModel}`);
  }

  async page(cursor: string | undefined, signal?: AbortSignal): Promise<CrawlPage> {
    let url: URL;
    if (cursor) {
      url = new URL(cursor);
      // The cursor is the server's Link: follow it only on the configured host.
      if (url.origin !== new URL(this.options.baseUrl).origin) throw new Error(`the Hub's next page ${url.origin} is not on ${this.options.baseUrl}`);
    } else {
      url = new URL("/api/models", this.options.baseUrl);
      url.searchParams.set("filter", `base_model:adapter:${this.options.baseModel}`);
      url.searchParams.set("sort", "lastModified");
      url.searchParams.set("direction", "-1");
      url.searchParams.set("limit", String(this.options.pageSize ?? 50));
    }
    const { body, headers } = await getJson(url.href, { ...this.options.retry, headers: this.headers(), signal });
    const repos = listed.parse(body);
    const candidates: CrawlCandidate[] = [];
    for (const repo of repos) candidates.push(...await this.repository(repo.id, signal));
    return { candidates, next: nextLink(headers.get("link")) };
  }

  downloadHeaders(): Record<string, string> {
    return this.headers();
  }

  private headers(): Record<string, string> {
    return this.options.token ? { authorization: `Bearer ${this.options.token}` } : {};
  }

  private async repository(repo: string, signal?: AbortSignal): Promise<CrawlCandidate[]> {
    const api = (path: string) => new URL(`/api/models/${repo}${path}`, this.options.baseUrl).href;
    const card = info.parse((await getJson(api(""), { ...this.options.retry, headers: this.headers(), signal })).body);
    const revision = card.sha ?? "main";
    const files = tree.parse((await getJson(api(`/tree/${revision}`), { ...this.options.retry, headers: this.headers(), signal })).body)
      .filter((entry) => entry.type === "file" && entry.path.toLowerCase().endsWith(".safetensors"))
      .slice(0, this.options.filesPerRepo ?? 4);
    const captions = [card.cardData?.instance_prompt, ...(card.cardData?.widget ?? []).map((widget) => widget.text)]
      .map((text) => text?.trim()).filter((text): text is string => !!text).slice(0, 20);
    const tags = card.tags.filter((tag) => !/^(base_model|license|region|endpoints_compatible|diffusers|lora|safetensors|template:)/.test(tag));
    return files.map((entry): CrawlCandidate => ({
      key: `huggingface:${repo}/${entry.path}@${entry.lfs?.oid ?? revision}`,
      url: new URL(`/${repo}/resolve/${revision}/${entry.path.split("/").map(encodeURIComponent).join("/")}`, this.options.baseUrl).href,
      name: files.length > 1 ? `${repo}/${entry.path.replace(/\.safetensors$/i, "")}` : repo,
      ...(entry.lfs?.oid ? { sha256: entry.lfs.oid.toLowerCase() } : {}),
      ...(entry.lfs?.size ?? entry.size ? { bytes: entry.lfs?.size ?? entry.size } : {}),
      tags, captions, license: card.cardData?.license ?? "",
      nsfw: card.tags.includes("not-for-all-audiences"),
      page: new URL(`/${repo}`, this.options.baseUrl).href,
    }));
  }
}

/** The URL of rel="next" in a Link header. */
export function nextLink(header: string | null): string | undefined {
  for (const part of (header ?? "").split(",")) {
    const match = /<([^>]+)>\s*;\s*rel="?next"?/.exec(part.trim());
    if (match) return match[1];
  }
  return undefined;
}
