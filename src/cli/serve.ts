// `autolora serve`: the host with its web chat; `autolora imagine`: one /imagine from the command line.
import { copyFile, mkdir } from "node:fs/promises";
import { basename, join } from "node:path";
import { parseArgs } from "node:util";
import { loadConfig } from "../config/load.js";
import { startHost, type Host } from "../host.js";
import { FUSIONS, type Fusion } from "../pipeline/imagine.js";
import type { ChatAdapter } from "../plugins.js";
import type { CliIo } from "./main.js";

export interface Serving {
  host: Host;
  adapters: ChatAdapter[];
  stop(): Promise<void>;
}

/** Start the host and the web chat from the configuration in `env`. */
export async function startServing(env: Record<string, string | undefined>, log: (line: string) => void): Promise<Serving> {
  const { config, secrets } = loadConfig(env);
  log(`[host] secrets: ${JSON.stringify(secrets.describe())}`);
  const host = await startHost(config, secrets, log);
  const adapters: ChatAdapter[] = [];
  try {
    for (const factory of host.plugins.chatAdapters) {
      const adapter = factory.create({
        core: host.core, context: host.context, secrets, generations: host.generations, dataDir: host.dataDir, config, log,
      });
      if (!adapter) {
        log(`[host] chat adapter ${factory.name} is not configured; skipping it`);
        continue;
      }
      await adapter.start();
      adapters.push(adapter);
    }
    if (adapters.length === 0) throw new Error("no chat adapter is enabled (web.enabled is false and no other is configured)");
    host.scheduler.start();
  } catch (error) {
    await Promise.all(adapters.map((adapter) => adapter.stop()));
    await host.stop();
    const code = (error as NodeJS.ErrnoException).code;
    throw code === "EADDRINUSE" ? new Error(`a port the chat adapters need is taken (web ${config.web.port}, slack ${config.slack.port}); ` +
      "set AUTOLORA_WEB__PORT or AUTOLORA_SLACK__PORT to another") : error;
  }
  return {
    host, adapters,
    stop: async () => {
      await Promise.all(adapters.map((adapter) => adapter.stop()));
      await host.stop();
    },
  };
}

export async function serveCommand(_args: string[], io: CliIo): Promise<number> {
  const serving = await startServing(io.env ?? process.env, io.stderr);
  io.stdout(`serving on ${serving.adapters.map((adapter) => adapter.name).join(", ")}; Ctrl-C stops`);
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  io.stderr("[host] stopping: finishing the jobs in progress");
  await serving.stop();
  return 0;
}

export async function imagineCommand(args: string[], io: CliIo): Promise<number> {
  const { positionals, values } = parseArgs({
    args, allowPositionals: true, strict: true,
    options: { k: { type: "string" }, fusion: { type: "string" }, seed: { type: "string" }, out: { type: "string" }, json: { type: "boolean" } },
  });
  const prompt = positionals.join(" ").trim();
  const fusion = values.fusion as Fusion | undefined;
  const k = values.k === undefined ? undefined : Number(values.k);
  const seed = values.seed === undefined ? undefined : Number(values.seed);
  const problem = !prompt ? "usage: autolora imagine PROMPT [--k 0-8] [--fusion none|direct|dare|klora|gated] [--seed N] [--out DIR] [--json]"
    : fusion && !FUSIONS.includes(fusion) ? `--fusion must be one of ${FUSIONS.join(", ")}`
    : k !== undefined && !(Number.isInteger(k) && k >= 0 && k <= 8) ? "--k must be an integer from 0 to 8"
    : seed !== undefined && !(Number.isInteger(seed) && seed >= 0) ? "--seed must be a non-negative integer" : undefined;
  if (problem) {
    io.stderr(problem);
    return 2;
  }
  const { config, secrets } = loadConfig(io.env ?? process.env);
  const host = await startHost(config, secrets, io.stderr);
  try {
    const result = await host.pipeline.imagine(prompt, {
      user: "cli", fusion, k, seed,
      onUpdate: (update) => { if (update.type === "progress" && !values.json) io.stderr(`step ${update.step}/${update.total}`); },
    }).result;
    const files = [result.files.grid, ...result.files.singles];
    let written = files;
    if (values.out) {
      await mkdir(values.out, { recursive: true });
      written = await Promise.all(files.map(async (file, index) => {
        const target = join(values.out!, index === 0 ? `${result.generation.id}-grid.png` : `${result.generation.id}-${basename(file)}`);
        await copyFile(file, target);
        return target;
      }));
    }
    if (values.json) {
      io.stdout(JSON.stringify({ ...result.generation, files: written }));
    } else {
      for (const hit of result.loras) io.stdout(`LoRA ${hit.lora.name} (similarity ${hit.similarity.toFixed(3)})`);
      io.stdout(`grid: ${written[0]}`);
    }
    return 0;
  } finally {
    await host.stop();
  }
}
