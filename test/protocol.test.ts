// The host side of the worker NDJSON contract: what parses, and how bad lines are reported.
import { describe, expect, it } from "vitest";
import {
  type WorkerEvent,
  WorkerProtocolError,
  parseWorkerEvents,
  readWorkerEvents,
  workerHealthSchema,
} from "../src/gpu/protocol.js";

const jobStart = { type: "job-start", job_id: "j1", seeds: [7, 8], steps: 4 };
const jobProgress = {
  type: "job-progress",
  job_id: "j1",
  step: 2,
  total: 4,
  preview: { png_base64: "iVBORw0KGgo=", width: 16, height: 16 },
};
const jobEnd = {
  type: "job-end",
  job_id: "j1",
  images: [{ seed: 7, png_base64: "iVBORw0KGgo=", width: 64, height: 64 }],
  fusion: "gated",
  loras: [{ sha256: "ab".repeat(32), name: "watercolor", format: "kohya", scale: 1 }],
  model_version: "proving-ground@3",
  gate_version: "gates@2",
  timings: { total_ms: 812.5, sampling_ms: 640 },
};
const jobError = { type: "job-error", job_id: "j2", code: "lora-missing", message: "no LoRA ab..ab in cache" };

const ndjson = (...events: object[]) => events.map((event) => JSON.stringify(event)).join("\n");

function streamOf(chunks: string[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
      controller.close();
    },
  });
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<WorkerEvent[]> {
  const events: WorkerEvent[] = [];
  for await (const event of readWorkerEvents(stream)) events.push(event);
  return events;
}

function protocolErrorOf(action: () => unknown): WorkerProtocolError {
  try {
    action();
  } catch (error) {
    expect(error).toBeInstanceOf(WorkerProtocolError);
    return error as WorkerProtocolError;
  }
  throw new Error("expected a WorkerProtocolError");
}

describe("parseWorkerEvents", () => {
  it("parses every event type, with or without a final newline", () => {
    const text = ndjson(jobStart, jobProgress, jobEnd, jobError);
    expect(parseWorkerEvents(text)).toEqual([jobStart, jobProgress, jobEnd, jobError]);
    expect(parseWorkerEvents(`${text}\n`)).toEqual([jobStart, jobProgress, jobEnd, jobError]);
  });

  it("accepts a progress event without preview and a job-end without gates", () => {
    const { preview: _preview, ...bareProgress } = jobProgress;
    const events = parseWorkerEvents(ndjson(bareProgress, { ...jobEnd, gate_version: null }));
    expect(events.map((event) => event.type)).toEqual(["job-progress", "job-end"]);
  });

  it("skips blank lines and tolerates CRLF", () => {
    expect(parseWorkerEvents(`${JSON.stringify(jobStart)}\r\n\r\n${JSON.stringify(jobError)}\r\n`)).toEqual([
      jobStart,
      jobError,
    ]);
  });

  it("reports bad JSON with its line number", () => {
    const error = protocolErrorOf(() => parseWorkerEvents(`${JSON.stringify(jobStart)}\n{"type": "job-progress",`));
    expect(error.code).toBe("worker-protocol");
    expect(error.reason).toBe("invalid-json");
    expect(error.lineNumber).toBe(2);
    expect(error.message).toMatch(/^worker event line 2: not JSON/);
  });

  it("reports an unknown event type", () => {
    const error = protocolErrorOf(() => parseWorkerEvents(ndjson(jobStart, { type: "job-finished", job_id: "j1" })));
    expect(error.reason).toBe("invalid-event");
    expect(error.lineNumber).toBe(2);
    expect(error.message).toMatch(/^worker event line 2: .*type/);
  });

  it("names the path of a missing nested field", () => {
    const { seed: _seed, ...imageWithoutSeed } = jobEnd.images[0]!;
    const error = protocolErrorOf(() =>
      parseWorkerEvents(ndjson(jobStart, jobProgress, { ...jobEnd, images: [imageWithoutSeed] })),
    );
    expect(error.reason).toBe("invalid-event");
    expect(error.lineNumber).toBe(3);
    expect(error.message).toContain("line 3");
    expect(error.message).toContain("images.0.seed");
  });

  it("rejects a step below 1 and a fractional seed", () => {
    expect(protocolErrorOf(() => parseWorkerEvents(ndjson({ ...jobProgress, step: 0 }))).message).toContain(
      "step",
    );
    expect(protocolErrorOf(() => parseWorkerEvents(ndjson({ ...jobStart, seeds: [1.5] }))).message).toContain(
      "seeds.0",
    );
  });
});

describe("readWorkerEvents", () => {
  it("reassembles lines split across chunks, including a final line without newline", async () => {
    const text = ndjson(jobStart, jobProgress, jobEnd);
    const cuts = [5, 40, 41, text.indexOf("job-end") + 3];
    const chunks = [0, ...cuts].map((start, index) => text.slice(start, cuts[index] ?? text.length));
    expect(chunks.join("")).toBe(text);
    expect(await collect(streamOf(chunks))).toEqual([jobStart, jobProgress, jobEnd]);
  });

  it("decodes a UTF-8 character split between chunks", async () => {
    const bytes = new TextEncoder().encode(`${JSON.stringify({ ...jobError, message: "café ☕" })}\n`);
    const split = bytes.indexOf(0xe2) + 1; // inside the three bytes of ☕
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(bytes.slice(0, split));
        controller.enqueue(bytes.slice(split));
        controller.close();
      },
    });
    expect(await collect(stream)).toEqual([{ ...jobError, message: "café ☕" }]);
  });

  it("counts lines across chunks when reporting an error", async () => {
    const chunks = [`${JSON.stringify(jobStart)}\n${JSON.stringify(jobProgress).slice(0, 10)}`];
    chunks.push(`${JSON.stringify(jobProgress).slice(10)}\n\n{"type":"job-end"}\n`);
    const error = await collect(streamOf(chunks)).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(WorkerProtocolError);
    expect((error as WorkerProtocolError).lineNumber).toBe(4);
    expect((error as WorkerProtocolError).message).toMatch(/^worker event line 4: .*job_id/);
  });

  it("cancels the stream when the reader stops early", async () => {
    let cancelled = false;
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(`${ndjson(jobStart, jobProgress)}\n`));
      },
      cancel() {
        cancelled = true;
      },
    });
    for await (const event of readWorkerEvents(stream)) {
      expect(event).toEqual(jobStart);
      break;
    }
    expect(cancelled).toBe(true);
  });
});

describe("workerHealthSchema", () => {
  it("parses a health body", () => {
    const health = {
      status: "ok",
      family: "proving-ground",
      device: "cpu",
      model_version: "proving-ground@3",
      gate_version: null,
      cached_loras: [{ sha256: "cd".repeat(32), name: "neon", bytes: 1_048_576 }],
      busy: false,
    };
    expect(workerHealthSchema.parse(health)).toEqual(health);
    expect(workerHealthSchema.safeParse({ ...health, busy: "no" }).success).toBe(false);
  });
});
