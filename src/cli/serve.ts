// `autolora serve`: the host with its web chat; `autolora imagine`: one /imagine from the command line.
import { copyFile, mkdir } from "node:fs/promises";
import { basename, join } from "node:path";
import { parseArgs } from "node:util";
import { loadConfig } from "../config/load.js";
import { startHost, type Host } from "../host.js";
import { FUSIONS, MAX_LORAS_PER_JOB, MAX_SEED, type Fusion } from "../gpu/protocol.js";
import { WorkerJobError } from "../gpu/errors.js";
import { ImagineInputError } from "../pipeline/imagine.js";
import { AdapterPortError, ChatAdapters, type ChatAdaptersOptions } from "../bots/adapters.js";
import { resumeJobs } from "../bots/resume.js";
import type { CliIo } from "./main.js";

export interface Serving {
  host: Host;
  /** The chat adapters: `running()` those serving now, `status()` each one's state (running, retrying, …). */
  chats: ChatAdapters;
  stop(): Promise<void>;
}

/** Start the host and its chat adapters from the configuration in `env`. */
export async function startServing(env: Record<string, string | undefined>, log: (line: string) => void,
  adapterOptions: Partial<ChatAdaptersOptions> = {}): Promise<Serving> {
  const { config, secrets } = loadConfig(env);
  log(`[host] secrets: ${JSON.stringify(secrets.describe())}`);
  const host = await startHost(config, secrets, log);
  const chats = new ChatAdapters(host.plugins.chatAdapters, {
    core: host.core, context: host.context, secrets, generations: host.generations, dataDir: host.dataDir, config, log,
  }, { log, ...adapterOptions });
  try {
    await chats.start();
    host.scheduler.start();
  } catch (error) {
    await host.stop();
    throw error instanceof AdapterPortError ? new Error(`${error.message}. A port the chat adapters need is taken (web ${config.web.port}, ` +
      `slack ${config.slack.port}); set AUTOLORA_WEB__PORT or AUTOLORA_SLACK__PORT to another`) : error;
  }
  const journal = host.context.journal;
  // In the background: the host serves new commands while the jobs accepted before a restart are answered.
  if (journal) {
    void resumeJobs(journal, host.core, chats.running(), log).catch((error: unknown) =>
      log(`[jobs] could not take up the jobs accepted before the restart: ${error instanceof Error ? error.message : String(error)}`));
  }
  return {
    host, chats,
    stop: async () => {
      // Jobs that end because the host stops stay journaled, to be taken up at the next start.
      if (journal) journal.stopping = true;
      await chats.stop();
      await host.stop();
    },
  };
}

export async function serveCommand(_args: string[], io: CliIo): Promise<number> {
  const serving = await startServing(io.env ?? process.env, io.stderr);
  const chats = serving.chats.status().map((chat) => chat.state === "running" ? chat.name : `${chat.name} (${chat.state})`);
  io.stdout(`serving on ${chats.join(", ")}; Ctrl-C stops`);
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
  // Decimal digits only: Number() alone reads "0x3", "1e0", "3.0" and "" as numbers too.
  const wholeNumber = (name: string, text: string | undefined, max: number) => text === undefined || (/^\d+$/.test(text) && Number(text) <= max)
    ? undefined : `--${name} must be a whole number from 0 to ${max}, written in digits; ${JSON.stringify(text)} is not`;
  const problem = !prompt ? `usage: autolora imagine PROMPT [--k 0-${MAX_LORAS_PER_JOB}] [--fusion ${FUSIONS.join("|")}] [--seed N] [--out DIR] [--json]`
    : fusion && !FUSIONS.includes(fusion) ? `--fusion must be one of ${FUSIONS.join(", ")}`
    : wholeNumber("k", values.k, MAX_LORAS_PER_JOB) ?? wholeNumber("seed", values.seed, MAX_SEED);
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
  } catch (error) {
    // A prompt or seeds past the worker's limits: the pipeline says which, and that is the user's to change.
    if (error instanceof ImagineInputError) {
      io.stderr(error.message);
      return 2;
    }
    // The worker refused the job (a LoRA that does not fit its model, a file gone): one line saying why.
    if (error instanceof WorkerJobError) {
      io.stderr(`the worker could not make this image (${error.code}): ${error.message}`);
      return 1;
    }
    throw error;
  } finally {
    await host.stop();
  }
}
