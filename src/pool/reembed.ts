// Re-embedding the pool after the LoRA encoder changed: every LoRA whose embedding another encoder made is read
// again by a worker and its row replaced, one at a time, in the background. Search keeps answering throughout:
// each row is replaced atomically, and both encoders map into the same (frozen) text-encoder space, so a pool
// half re-embedded still ranks sensibly. A new encoder of another width cannot share the table: that is refused.
import type { EmbedResult } from "../gpu/protocol.js";
import type { LoraIndex } from "./index.js";
import type { LoraStore } from "./store.js";

export interface ReembedOptions {
  index: LoraIndex;
  store: LoraStore;
  /** The encoder the workers now embed with (their /health says). */
  encoderVersion: string;
  embed: (path: string, signal?: AbortSignal) => Promise<EmbedResult>;
  signal?: AbortSignal;
  log?: (line: string) => void;
}

export interface ReembedReport {
  encoderVersion: string;
  reembedded: number;
  /** LoRAs whose stored file is missing or that the worker refused. */
  skipped: Array<{ id: string; reason: string }>;
  seconds: number;
}

export async function reembedPool(options: ReembedOptions): Promise<ReembedReport> {
  const started = performance.now();
  const version = options.encoderVersion;
  const report: ReembedReport = { encoderVersion: version, reembedded: 0, skipped: [], seconds: 0 };
  const skipped = new Set<string>();
  for (;;) {
    options.signal?.throwIfAborted();
    const batch = (await options.index.embeddedByOther(version, 50 + skipped.size)).filter((lora) => !skipped.has(lora.id));
    if (batch.length === 0) break;
    for (const lora of batch) {
      options.signal?.throwIfAborted();
      const skip = (reason: string) => {
        skipped.add(lora.id);
        report.skipped.push({ id: lora.id, reason });
      };
      if (!(await options.store.has(lora.id))) {
        skip("its file is not in the store");
        continue;
      }
      let embedded: EmbedResult;
      try {
        embedded = await options.embed(options.store.pathOf(lora.id), options.signal);
      } catch (error) {
        if (options.signal?.aborted) throw error;
        skip(error instanceof Error ? error.message : String(error));
        continue;
      }
      if (!embedded.embedding) {
        throw new Error(`a worker has no LoRA encoder (${embedded.no_embedding ?? "it sent no embedding"}); re-embed once every worker runs ${version}`);
      }
      if (embedded.encoder_version !== version) {
        throw new Error(`a worker embedded with ${embedded.encoder_version}, not ${version}; re-embed once every worker runs the same encoder`);
      }
      const record = await options.index.get(lora.id);
      if (!record) continue; // removed meanwhile
      await options.index.upsert([{ ...record, vector: embedded.embedding, encoder_version: version, embedding: "weights" }]);
      report.reembedded += 1;
      if (report.reembedded % 50 === 0) options.log?.(`[reembed] ${report.reembedded} LoRAs re-embedded with ${version}`);
    }
  }
  report.seconds = Math.round((performance.now() - started) / 100) / 10;
  return report;
}
