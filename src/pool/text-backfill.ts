// Text embeddings for LoRAs indexed before the hybrid score existed (the index migration marks them unchecked):
// each one's text (lora-text.ts, with the training tags its stored file holds) is embedded and its row replaced,
// a batch at a time. Search keeps answering throughout: a LoRA not yet done is scored by its weights alone.
import type { LoraIndex } from "./index.js";
import { embedLoraText, loraTextPieces, type TextEmbedder } from "./lora-text.js";
import { DEFAULT_LIMITS, readSafetensorsHeader } from "./safetensors.js";
import type { LoraStore } from "./store.js";

export interface TextBackfillReport {
  checked: number;
  /** Of those, LoRAs that had text to embed. */
  withText: number;
}

export async function backfillLoraText(pool: { index: LoraIndex; store: LoraStore }, encoder: TextEmbedder,
  log?: (line: string) => void): Promise<TextBackfillReport> {
  const report: TextBackfillReport = { checked: 0, withText: 0 };
  if (!pool.index.textUnchecked) return report;
  for (;;) {
    const batch = await pool.index.textUnchecked(100);
    if (batch.length === 0) break;
    for (const lora of batch) {
      const record = await pool.index.get(lora.id);
      if (!record) continue; // removed meanwhile
      // The training tags are metadata: a file that is missing or unreadable now still gets its source's text.
      const fileMetadata = await readSafetensorsHeader(pool.store.pathOf(lora.id), DEFAULT_LIMITS)
        .then((header) => header.metadata, () => ({}));
      // A name an upload got from its file says little; a source's (Civitai, Hugging Face, the bundle) is chosen.
      const name = record.source === "upload" ? undefined : record.name;
      const text = await embedLoraText(encoder, loraTextPieces({ ...record, name }, fileMetadata));
      // A LoRA no encoder embedded is searched by its text: the text embedding is its vector too.
      const vector = record.encoder_version === "" && text ? text : record.vector;
      await pool.index.upsert([{ ...record, vector, ...(text ? { text_vector: text } : {}), text_checked: true }]);
      report.checked += 1;
      if (text) report.withText += 1;
    }
    log?.(`[pool] text embeddings: ${report.checked} LoRAs checked, ${report.withText} with text`);
  }
  return report;
}
