// What a crawl source is: something that lists LoRA files page by page (Civitai, Hugging Face, a local folder,
// a plugin's own site). The crawler downloads, checks and ingests what it lists.

/** One LoRA file a source offers. */
export interface CrawlCandidate {
  /** Unique within the source and stable across crawls, e.g. "civitai:version:1234". */
  key: string;
  /** Where to fetch the file: https:// (or file:// for a local folder). */
  url: string;
  name: string;
  /** The sha256 the source states (hex); the download must match it. */
  sha256?: string;
  /** The size the source states, in bytes. */
  bytes?: number;
  tags?: string[];
  triggerWords?: string[];
  /** Prompts of the source's sample images or widget examples: they become captions for encoder training. */
  captions?: string[];
  license?: string;
  nsfw?: boolean;
  /** The human-readable page of the LoRA. */
  page?: string;
}

export interface CrawlPage {
  candidates: CrawlCandidate[];
  /** Where the next page starts; undefined on the last page. */
  next?: string;
}

export interface CrawlSource {
  /** Lower-case letters, digits and dashes: names the source in the config, the CLI and the state file. */
  name: string;
  /** The page starting at `cursor` (undefined: the newest first). */
  page(cursor: string | undefined, signal?: AbortSignal): Promise<CrawlPage>;
  /** Headers for downloading a candidate's file (an API key), if any. */
  downloadHeaders?(candidate: CrawlCandidate): Record<string, string>;
}
