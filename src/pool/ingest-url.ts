// `/lora add url:…`: a LoRA downloaded (https only, no private addresses, size-capped) into a temporary file,
// ingested, and the temporary file removed whatever happened.
import { rm } from "node:fs/promises";
import { download, type DownloadOptions } from "./download.js";
import type { IngestMetadata, IngestResult } from "./ingest.js";

export async function ingestFromUrl(url: string, metadata: IngestMetadata, options: DownloadOptions,
  ingest: (path: string, metadata: IngestMetadata) => Promise<IngestResult>): Promise<IngestResult> {
  const file = await download(url, options);
  try {
    return await ingest(file.path, metadata);
  } finally {
    await rm(file.path, { force: true });
  }
}
