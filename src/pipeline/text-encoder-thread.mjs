// The host's text encoder, on its own thread (text-encoder.ts starts it). onnxruntime-node runs a session
// synchronously on the thread that calls `run` (about 40 ms per prompt on one core), and the tokenizer is plain
// JavaScript: on the host's main thread both held every chat acknowledgement of a burst behind the prompts being
// embedded. Plain JavaScript, not TypeScript, so that the same file runs under the test runner and from dist/.
//
// Protocol: workerData { folder, threads }; the thread answers { type: "ready", dim } or { type: "failed", message }
// once, then one { id, vectors } (a flat Float32Array, dim values per text) or { id, error } per { id, texts }.
// Requests that arrive while a batch runs are embedded together in the next one (at most BATCH_TEXTS texts).
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { parentPort, workerData } from "node:worker_threads";
import { Tokenizer } from "@huggingface/tokenizers";
import * as ort from "onnxruntime-node";
import { z } from "zod";

const BATCH_TEXTS = 64;

/** Read one JSON file of the export, naming the fix when it is missing. */
async function readJson(folder, name) {
  try {
    return JSON.parse(await readFile(join(folder, name), "utf8"));
  } catch (error) {
    throw new Error(error.code === "ENOENT"
      ? `no text encoder export in ${folder} (${name} missing); run \`make text-encoder\``
      : `cannot read ${join(folder, name)}: ${error.message}`);
  }
}

const exportConfigSchema = z.object({
  onnx: z.string(),
  inputs: z.tuple([z.string(), z.string()]),
  output: z.string(),
  dim: z.int().min(1),
  max_length: z.int().min(2),
  normalised: z.literal(true),
});

async function load({ folder, threads }) {
  const parsed = exportConfigSchema.safeParse(await readJson(folder, "text-encoder.json"));
  if (!parsed.success) {
    throw new Error(`${join(folder, "text-encoder.json")} is not a text encoder export (${z.prettifyError(parsed.error)}); ` +
      "re-export it with `make text-encoder`");
  }
  const config = parsed.data;
  const tokenizer = new Tokenizer(await readJson(folder, "tokenizer.json"), await readJson(folder, "tokenizer_config.json"));
  const id = (token) => {
    const value = tokenizer.token_to_id(token);
    if (value === undefined) throw new Error(`the tokenizer in ${folder} has no ${token} token`);
    return value;
  };
  const special = { cls: id("[CLS]"), sep: id("[SEP]"), pad: id("[PAD]") };
  const session = await ort.InferenceSession.create(join(folder, config.onnx), {
    executionProviders: ["cpu"], intraOpNumThreads: threads, graphOptimizationLevel: "all",
  });

  /** One flat Float32Array of unit vectors, dim values per text, in order. */
  async function embed(texts) {
    // Truncation as the worker's tokenizer does it: [CLS], the first max_length - 2 word pieces, [SEP].
    const sequences = texts.map((text) => [
      special.cls, ...tokenizer.encode(text, { add_special_tokens: false }).ids.slice(0, config.max_length - 2), special.sep,
    ]);
    const length = Math.max(...sequences.map((ids) => ids.length));
    const ids = new BigInt64Array(texts.length * length).fill(BigInt(special.pad));
    const mask = new BigInt64Array(texts.length * length);
    sequences.forEach((sequence, row) => sequence.forEach((token, column) => {
      ids[row * length + column] = BigInt(token);
      mask[row * length + column] = 1n;
    }));
    const [inputIds, attentionMask] = config.inputs;
    const outputs = await session.run({
      [inputIds]: new ort.Tensor("int64", ids, [texts.length, length]),
      [attentionMask]: new ort.Tensor("int64", mask, [texts.length, length]),
    });
    return Float32Array.from(outputs[config.output].data.subarray(0, texts.length * config.dim));
  }
  return { dim: config.dim, embed };
}

let encoder;
try {
  encoder = await load(workerData);
  parentPort.postMessage({ type: "ready", dim: encoder.dim });
} catch (error) {
  parentPort.postMessage({ type: "failed", message: error instanceof Error ? error.message : String(error) });
}

if (encoder) {
  const waiting = [];
  let running = false;
  parentPort.on("message", (request) => {
    waiting.push(request);
    if (!running) setImmediate(drain);
    running = true;
  });

  async function drain() {
    while (waiting.length > 0) {
      const batch = [];
      let texts = 0;
      while (waiting.length > 0 && (batch.length === 0 || texts + waiting[0].texts.length <= BATCH_TEXTS)) {
        const request = waiting.shift();
        batch.push(request);
        texts += request.texts.length;
      }
      try {
        const vectors = await encoder.embed(batch.flatMap((request) => request.texts));
        let offset = 0;
        for (const request of batch) {
          const size = request.texts.length * encoder.dim;
          const own = vectors.slice(offset, offset + size);
          offset += size;
          parentPort.postMessage({ id: request.id, vectors: own }, [own.buffer]);
        }
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        for (const request of batch) parentPort.postMessage({ id: request.id, error: message });
      }
    }
    running = false;
  }
}
