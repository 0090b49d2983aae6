// One place decides each limit: the worker's protocol module on each side of the HTTP contract
// (src/gpu/protocol.ts, autolora_worker/protocol.py), which must agree, and every host layer held to it: the
// pipeline, the command line (the config's and the chats' checks are in config.test.ts and chat-core.test.ts).
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { main } from "../src/cli/main.js";
import {
  FUSIONS, MAX_EMBED_PATHS, MAX_LORAS_PER_JOB, MAX_PROMPT_CHARS, MAX_SEED, MAX_SEEDS_PER_JOB, SIZE_MULTIPLE, generateRequestSchema, judgeRequestSchema,
} from "../src/gpu/protocol.js";
import { ImaginePipeline, type ImagineDependencies } from "../src/pipeline/imagine.js";
import { FAMILIES } from "../src/pool/families.js";
import { itRequiring, pythonWorker } from "./helpers/requirements.js";

const root = join(import.meta.dirname, "..");
const python = join(root, ".venv", "bin", "python");

// What the worker's own modules say, as JSON: its request schema (pydantic), fusion names and model families.
const dumpWorkerSide = `
import json
from autolora_worker import families, protocol
print(json.dumps({
    "generate": protocol.GenerateRequest.model_json_schema(),
    "judge": protocol.JudgeRequest.model_json_schema(),
    "fusions": list(protocol.FUSIONS),
    "max_seed": protocol.MAX_SEED,
    "max_embed_paths": protocol.EmbedRequest.model_json_schema()["properties"]["paths"]["anyOf"][0]["maxItems"],
    "families": {name: {"hidden": spec.inner_dim, "double_blocks": spec.transformer["num_layers"],
                        "single_blocks": spec.transformer["num_single_layers"],
                        "pixels_per_token": spec.pixels_per_token} for name, spec in families.FAMILIES.items()},
}))
`;

type JsonSchema = Record<string, unknown>;
const BOUNDS = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems", "enum"];

/** The limits a JSON Schema puts on a value, nested into items and properties; refs resolved, `null` dropped. */
function limitsOf(schema: JsonSchema, definitions: Record<string, JsonSchema>): JsonSchema {
  if (typeof schema.$ref === "string") return limitsOf(definitions[schema.$ref.split("/").at(-1)!]!, definitions);
  const variants = (schema.anyOf as JsonSchema[] | undefined)?.filter((variant) => variant.type !== "null");
  if (variants?.length === 1) return limitsOf(variants[0]!, definitions);
  const limits: JsonSchema = {};
  for (const key of BOUNDS) if (schema[key] !== undefined) limits[key] = schema[key];
  if (schema.items) limits.items = limitsOf(schema.items as JsonSchema, definitions);
  if (schema.properties) {
    limits.properties = Object.fromEntries(Object.entries(schema.properties as Record<string, JsonSchema>)
      .map(([name, property]) => [name, limitsOf(property, definitions)]));
  }
  return limits;
}

describe("the two sides of the worker protocol", () => {
  itRequiring(pythonWorker)("agree on every limit of POST /generate, the fusion names and the model families", () => {
    const worker = JSON.parse(execFileSync(python, ["-c", dumpWorkerSide], {
      cwd: join(root, "src", "gpu", "worker"), encoding: "utf8", env: { ...process.env, PYTHONPATH: join(root, "src", "gpu", "worker") },
    })) as { generate: JsonSchema; judge: JsonSchema; fusions: string[]; max_seed: number; max_embed_paths: number; families: Record<string, Record<string, number>> };

    const host = limitsOf(z.toJSONSchema(generateRequestSchema) as JsonSchema, {});
    const workerLimits = limitsOf(worker.generate, (worker.generate.$defs ?? {}) as Record<string, JsonSchema>);
    // Every field the host may send is one the worker takes, with the same limits; the worker's other fields
    // (global_rank, dare_density) keep their defaults.
    const hostFields = host.properties as Record<string, JsonSchema>;
    const workerFields = workerLimits.properties as Record<string, JsonSchema>;
    for (const [field, limits] of Object.entries(hostFields)) expect([field, workerFields[field]]).toEqual([field, limits]);

    expect(limitsOf(z.toJSONSchema(judgeRequestSchema) as JsonSchema, {})).toEqual(limitsOf(worker.judge, {}));

    expect(worker.fusions).toEqual([...FUSIONS]);
    expect(worker.max_seed).toBe(MAX_SEED);
    expect(worker.max_embed_paths).toBe(MAX_EMBED_PATHS);
    expect(Object.keys(worker.families).sort()).toEqual(FAMILIES.map((family) => family.name).sort());
    for (const family of FAMILIES) {
      expect(worker.families[family.name]).toMatchObject({
        hidden: family.hidden, double_blocks: family.doubleBlocks, single_blocks: family.singleBlocks,
      });
      // The chats' sizes (multiples of SIZE_MULTIPLE) must tile into every family's tokens.
      expect(SIZE_MULTIPLE % worker.families[family.name]!.pixels_per_token!).toBe(0);
    }
  });
});

describe("the pipeline", () => {
  const pipeline = (seedsPerPrompt = 4) => new ImaginePipeline({
    queue: { enqueue: () => ({ result: new Promise(() => undefined), cancel: () => true }) },
    settings: { k: 2, minSimilarity: 0, fusion: "gated", seedsPerPrompt, steps: 0, filters: {} },
  } as unknown as ImagineDependencies);

  it("takes prompts up to the worker's limit and says by how much a longer one is over", () => {
    expect(() => pipeline().imagine("a".repeat(MAX_PROMPT_CHARS), { user: "cli" })).not.toThrow();
    expect(() => pipeline().imagine("a".repeat(MAX_PROMPT_CHARS + 1), { user: "cli" })).toThrow(
      `the prompt is ${MAX_PROMPT_CHARS + 1} characters; the limit is ${MAX_PROMPT_CHARS}`);
  });

  it("draws up to the worker's seeds per job and names that limit past it", () => {
    expect(() => pipeline(MAX_SEEDS_PER_JOB).imagine("a cat", { user: "cli" })).not.toThrow();
    expect(() => pipeline().imagine("a cat", { user: "cli", seeds: Array.from({ length: MAX_SEEDS_PER_JOB + 1 }, (_, index) => index) }))
      .toThrow(`a job draws 1 to ${MAX_SEEDS_PER_JOB} seeds, each a whole number from 0 to ${MAX_SEED}`);
  });
});

describe("autolora imagine", () => {
  // An invalid config makes any run that got past the option checks stop at once instead of starting a host.
  async function refusal(...args: string[]): Promise<[number, string[]]> {
    const lines: string[] = [];
    const code = await main(["imagine", ...args], {
      stdout: () => undefined, stderr: (line) => lines.push(line), env: { AUTOLORA_WEB__PORT: "not a port" },
    });
    return [code, lines];
  }

  it("reads --k and --seed only as plain digits within the worker's limits", async () => {
    for (const k of ["0x3", "1e0", "3.0", "", String(MAX_LORAS_PER_JOB + 1)]) {
      expect(await refusal("a cat", "--k", k)).toEqual([2, [`--k must be a whole number from 0 to ${MAX_LORAS_PER_JOB}, written in digits; ${JSON.stringify(k)} is not`]]);
    }
    for (const seed of ["0x10", "-1", "1e3", String(2 ** 64)]) {
      expect(await refusal("a cat", `--seed=${seed}`)).toEqual([2, [`--seed must be a whole number from 0 to ${MAX_SEED}, written in digits; ${JSON.stringify(seed)} is not`]]);
    }
    expect(await refusal("a cat", "--fusion", "magic")).toEqual([2, [`--fusion must be one of ${FUSIONS.join(", ")}`]]);
    expect((await refusal())[1][0]).toMatch(/^usage: autolora imagine PROMPT \[--k 0-8\] \[--fusion none\|direct\|dare\|klora\|gated\]/);
  });
});
