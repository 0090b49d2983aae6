// The frozen text encoder on the host: the bundle's ONNX export (`make text-encoder`) run by onnxruntime-node,
// with its own tokenizer files, so a prompt is embedded here exactly as the worker embeds captions and the LoRA
// encoder was trained against (same truncation, mean pooling and L2 norm inside the graph).
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import * as ort from "onnxruntime-node";
import { z } from "zod";

const exportConfigSchema = z.object({
  onnx: z.string(),
  inputs: z.array(z.string()),
  output: z.string(),
  dim: z.int().min(1),
  max_length: z.int().min(2),
  normalised: z.literal(true),
});

export class TextEncoder {
  private constructor(
    private readonly session: ort.InferenceSession,
    private readonly tokenizer: Tokenizer,
    private readonly config: z.infer<typeof exportConfigSchema>,
    private readonly special: { cls: number; sep: number; pad: number },
  ) {}

  /** Load an export folder (text-encoder.json, the .onnx file, tokenizer.json, tokenizer_config.json). */
  static async load(folder: string, options: { threads?: number } = {}): Promise<TextEncoder> {
    const read = async (name: string) => {
      try {
        return JSON.parse(await readFile(join(folder, name), "utf8")) as unknown;
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        throw new Error(code === "ENOENT"
          ? `no text encoder export in ${folder} (${name} missing); run \`make text-encoder\``
          : `cannot read ${join(folder, name)}: ${(error as Error).message}`);
      }
    };
    const config = exportConfigSchema.parse(await read("text-encoder.json"));
    const tokenizer = new Tokenizer(await read("tokenizer.json") as object, await read("tokenizer_config.json") as object);
    const id = (token: string) => {
      const value = tokenizer.token_to_id(token);
      if (value === undefined) throw new Error(`the tokenizer in ${folder} has no ${token} token`);
      return value;
    };
    const session = await ort.InferenceSession.create(join(folder, config.onnx), {
      executionProviders: ["cpu"], intraOpNumThreads: options.threads ?? 1, graphOptimizationLevel: "all",
    });
    return new TextEncoder(session, tokenizer, config, { cls: id("[CLS]"), sep: id("[SEP]"), pad: id("[PAD]") });
  }

  get dimension(): number {
    return this.config.dim;
  }

  /** One unit vector per text, in order. */
  async embed(texts: string[]): Promise<Float32Array[]> {
    if (texts.length === 0) return [];
    // Truncation as the worker's tokenizer does it: [CLS], the first max_length - 2 word pieces, [SEP].
    const sequences = texts.map((text) => [
      this.special.cls,
      ...this.tokenizer.encode(text, { add_special_tokens: false }).ids.slice(0, this.config.max_length - 2),
      this.special.sep,
    ]);
    const length = Math.max(...sequences.map((ids) => ids.length));
    const ids = new BigInt64Array(texts.length * length).fill(BigInt(this.special.pad));
    const mask = new BigInt64Array(texts.length * length);
    sequences.forEach((sequence, row) => sequence.forEach((token, column) => {
      ids[row * length + column] = BigInt(token);
      mask[row * length + column] = 1n;
    }));
    const [inputIds, attentionMask] = this.config.inputs;
    const outputs = await this.session.run({
      [inputIds!]: new ort.Tensor("int64", ids, [texts.length, length]),
      [attentionMask!]: new ort.Tensor("int64", mask, [texts.length, length]),
    });
    const data = outputs[this.config.output]!.data as Float32Array;
    return texts.map((_, row) => data.slice(row * this.config.dim, (row + 1) * this.config.dim));
  }

  async close(): Promise<void> {
    await this.session.release();
  }
}
