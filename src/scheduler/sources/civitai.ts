// Civitai's REST API as a crawl source: GET /api/v1/models?types=LORA&baseModels=…&sort=…, pages linked by
// metadata.nextCursor. Each model version on a configured base model offers its primary .safetensors file with
// the SHA256 Civitai states, its trained words, tags, licence fields, NSFW level and the prompts of its preview
// images (captions for encoder training). The base URL is a setting: in 2026 Civitai split its SFW and full
// catalogues onto two domains.
import { z } from "zod";
import { getJson, type RetryOptions } from "../http.js";
import type { CrawlCandidate, CrawlPage, CrawlSource } from "../source.js";

export interface CivitaiOptions {
  /** e.g. https://civitai.com (SFW) or https://civitai.red (everything). */
  baseUrl: string;
  /** Civitai's base model names to take, e.g. ["Flux.1 D", "Flux.1 S"]. */
  baseModels: string[];
  /** Default "Newest". */
  sort?: string;
  /** Models per page, at most 100. Default 100. */
  pageSize?: number;
  apiKey?: string;
  /** NSFW levels (Civitai's bitmask: 1 PG, 2 PG-13, 4 R, 8 X, 16 XXX) at or above this count as nsfw. Default 4. */
  nsfwFrom?: number;
  retry?: RetryOptions;
}

const file = z.object({
  name: z.string(),
  sizeKB: z.number().optional(),
  downloadUrl: z.string(),
  type: z.string().optional(),
  primary: z.boolean().optional(),
  hashes: z.record(z.string(), z.string()).optional(),
  metadata: z.object({ format: z.string().nullish() }).passthrough().nullish(),
}).passthrough();

const version = z.object({
  id: z.number(),
  name: z.string().optional(),
  baseModel: z.string().optional(),
  trainedWords: z.array(z.string()).optional(),
  files: z.array(file).default([]),
  images: z.array(z.object({ nsfwLevel: z.number().optional(), meta: z.object({ prompt: z.string().optional() }).passthrough().nullish() }).passthrough()).default([]),
}).passthrough();

const model = z.object({
  id: z.number(),
  name: z.string(),
  type: z.string().optional(),
  nsfw: z.boolean().optional(),
  nsfwLevel: z.number().optional(),
  tags: z.array(z.union([z.string(), z.object({ name: z.string() })])).default([]),
  allowCommercialUse: z.union([z.array(z.string()), z.string()]).optional(),
  allowDerivatives: z.boolean().optional(),
  modelVersions: z.array(version).default([]),
}).passthrough();

const page = z.object({
  items: z.array(model),
  metadata: z.object({ nextCursor: z.union([z.string(), z.number()]).nullish(), nextPage: z.string().nullish() }).passthrough().default({}),
});

export class CivitaiSource implements CrawlSource {
  readonly name = "civitai";

  constructor(private readonly options: CivitaiOptions) {
    if (!/^https?:\/\//.test(options.baseUrl)) throw new Error(`the Civitai base URL must be http(s), not ${options.baseUrl}`);
    if (options.baseModels.length === 0) throw new Error("give Civitai at least one base model to crawl, e.g. \"Flux.1 D\"");
  }

  async page(cursor: string | undefined, signal?: AbortSignal): Promise<CrawlPage> {
    const url = new URL("/api/v1/models", this.options.baseUrl);
    url.searchParams.set("types", "LORA");
    for (const base of this.options.baseModels) url.searchParams.append("baseModels", base);
    url.searchParams.set("sort", this.options.sort ?? "Newest");
    url.searchParams.set("limit", String(this.options.pageSize ?? 100));
    url.searchParams.set("nsfw", "true"); // listed, then marked: the host's nsfw filter decides what is retrieved
    if (cursor) url.searchParams.set("cursor", cursor);
    const { body } = await getJson(url.href, { ...this.options.retry, headers: this.headers(), signal });
    const parsed = page.safeParse(body);
    if (!parsed.success) throw new Error(`Civitai answered an unexpected shape: ${parsed.error.issues[0]!.path.join(".")}: ${parsed.error.issues[0]!.message}`);
    const next = parsed.data.metadata.nextCursor;
    return { candidates: parsed.data.items.flatMap((item) => this.candidates(item)), next: next === null || next === undefined || next === "" ? undefined : String(next) };
  }

  downloadHeaders(): Record<string, string> {
    return this.headers();
  }

  private headers(): Record<string, string> {
    return this.options.apiKey ? { authorization: `Bearer ${this.options.apiKey}` } : {};
  }

  private candidates(item: z.infer<typeof model>): CrawlCandidate[] {
    if (item.type && item.type.toUpperCase() !== "LORA") return [];
    const nsfwFrom = this.options.nsfwFrom ?? 4;
    const tags = item.tags.map((tag) => (typeof tag === "string" ? tag : tag.name));
    const commercial = Array.isArray(item.allowCommercialUse) ? item.allowCommercialUse.join(",") : item.allowCommercialUse;
    const license = [commercial !== undefined ? `commercial use: ${commercial || "none"}` : "", item.allowDerivatives === false ? "no derivatives" : ""]
      .filter(Boolean).join("; ");
    return item.modelVersions.flatMap((entry): CrawlCandidate[] => {
      if (entry.baseModel && !this.options.baseModels.includes(entry.baseModel)) return [];
      const safetensors = entry.files.filter((candidate) => candidate.name.toLowerCase().endsWith(".safetensors")
        || candidate.metadata?.format === "SafeTensor");
      const chosen = safetensors.find((candidate) => candidate.primary) ?? safetensors[0];
      if (!chosen) return [];
      const sha256 = Object.entries(chosen.hashes ?? {}).find(([kind]) => kind.toUpperCase() === "SHA256")?.[1]?.toLowerCase();
      return [{
        key: `civitai:version:${entry.id}`,
        url: chosen.downloadUrl,
        name: entry.name && entry.name !== item.name ? `${item.name} (${entry.name})` : item.name,
        ...(sha256 ? { sha256 } : {}),
        ...(chosen.sizeKB !== undefined ? { bytes: Math.round(chosen.sizeKB * 1024) } : {}),
        tags, triggerWords: entry.trainedWords ?? [],
        captions: entry.images.map((image) => image.meta?.prompt?.trim()).filter((prompt): prompt is string => !!prompt).slice(0, 20),
        license,
        nsfw: item.nsfw === true || (item.nsfwLevel ?? 0) >= nsfwFrom,
        page: new URL(`/models/${item.id}?modelVersionId=${entry.id}`, this.options.baseUrl).href,
      }];
    });
  }
}
