// The frozen text encoder on the host: the bundle's ONNX export (`make text-encoder`) run by onnxruntime-node,
// with its own tokenizer files, so a prompt is embedded here exactly as the worker embeds captions and the LoRA
// encoder was trained against (same truncation, mean pooling and L2 norm inside the graph).
//
// The tokenizer and the session live on a thread of their own (text-encoder-thread.mjs): onnxruntime-node runs
// inference synchronously on the calling thread, and on the main thread it held chat acknowledgements behind it.
import { Worker } from "node:worker_threads";

type Reply = { id: number; vectors: Float32Array } | { id: number; error: string };
type Started = { type: "ready"; dim: number } | { type: "failed"; message: string };

export class TextEncoder {
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (vectors: Float32Array) => void; reject: (error: Error) => void }>();
  private failure: Error | undefined;

  private constructor(private readonly thread: Worker, readonly dimension: number) {
    thread.on("message", (reply: Reply) => this.answer(reply));
    thread.on("error", (error) => this.fail(new Error(`the text encoder thread failed: ${error.message}`)));
    thread.on("exit", (code) => this.fail(new Error(`the text encoder thread exited (code ${code})`)));
    thread.unref(); // it keeps the process alive only while a request waits on it (see request)
  }

  /** Load an export folder (text-encoder.json, the .onnx file, tokenizer.json, tokenizer_config.json) on a new
   *  thread; `threads` is onnxruntime's intra-op thread count (default 1). */
  static async load(folder: string, options: { threads?: number } = {}): Promise<TextEncoder> {
    const thread = new Worker(new URL("./text-encoder-thread.mjs", import.meta.url), {
      workerData: { folder, threads: options.threads ?? 1 },
    });
    let settle: { resolve: (started: Started) => void; reject: (error: Error) => void } | undefined;
    const early = {
      message: (started: Started) => settle?.resolve(started),
      error: (error: Error) => settle?.reject(error),
      exit: (code: number) => settle?.reject(new Error(`the text encoder thread exited (code ${code}) before loading ${folder}`)),
    };
    const started = await new Promise<Started>((resolve, reject) => {
      settle = { resolve, reject };
      thread.once("message", early.message).once("error", early.error).once("exit", early.exit);
    }).finally(() => thread.off("message", early.message).off("error", early.error).off("exit", early.exit));
    if (started.type === "failed") {
      await thread.terminate();
      throw new Error(started.message);
    }
    return new TextEncoder(thread, started.dim);
  }

  /** One unit vector per text, in order. */
  async embed(texts: string[]): Promise<Float32Array[]> {
    if (texts.length === 0) return [];
    if (this.failure) throw this.failure;
    const id = this.nextId++;
    const flat = await new Promise<Float32Array>((resolve, reject) => {
      if (this.pending.size === 0) this.thread.ref();
      this.pending.set(id, { resolve, reject });
      this.thread.postMessage({ id, texts });
    });
    return texts.map((_, row) => flat.subarray(row * this.dimension, (row + 1) * this.dimension));
  }

  async close(): Promise<void> {
    this.fail(new Error("the text encoder is closed"));
    await this.thread.terminate();
  }

  private answer(reply: Reply): void {
    const waiter = this.pending.get(reply.id);
    if (!waiter) return;
    this.pending.delete(reply.id);
    if (this.pending.size === 0) this.thread.unref();
    if ("error" in reply) waiter.reject(new Error(`text encoder: ${reply.error}`));
    else waiter.resolve(reply.vectors);
  }

  /** Every waiting and later request fails with `error` (the first failure is kept). */
  private fail(error: Error): void {
    this.failure ??= error;
    for (const waiter of this.pending.values()) waiter.reject(this.failure);
    this.pending.clear();
    this.thread.unref();
  }
}
