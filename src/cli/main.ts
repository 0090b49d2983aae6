// The `autolora` command line. Each subcommand is a function of its arguments and two output streams, so tests
// run it in-process; bin/autolora.js only wires it to the real process.
import { ConfigError } from "../config/load.js";
import { crawlCommand } from "./crawl.js";
import { modelsCommand, retrainCommand } from "./models.js";
import { poolCommand } from "./pool.js";
import { inspectCommand } from "./pool-inspect.js";
import { imagineCommand, serveCommand } from "./serve.js";

export interface CliIo {
  stdout: (line: string) => void;
  stderr: (line: string) => void;
  /** The environment the configuration is read from. Default: process.env. */
  env?: Record<string, string | undefined>;
}

const USAGE = [
  "usage: autolora <command>",
  "  serve                        the host and its web chat (config/default.yaml; AUTOLORA_* overrides)",
  "  imagine PROMPT [--k N] [--fusion F] [--seed N] [--out DIR] [--json]   one image grid from the command line",
  "  pool inspect FILE [--json]   the format, model family, module count and ranks of a LoRA file",
  "  pool add FILE... [--name N] [--tags a,b] [--trigger-words a,b] [--caption TEXT]... [--source S] [--url U] [--license L] [--nsfw] [--json]",
  "  pool add --manifest FILE     validate, store, embed on a worker and index LoRA files (a manifest describes many)",
  "  pool list [--family F] [--state active|blocked] [--tags a,b] [--json]",
  "  pool search TEXT [--k N] [--min-similarity S] [--selection top-k|covering] [--family F] [--tags a,b] [--json]   LoRAs a prompt retrieves",
  "  pool remove|block|unblock ID  (ID: the sha256 or its first 8+ hex characters)",
  "  pool reembed [--json]        embed every LoRA the workers' encoder has not (after a new encoder)",
  "  crawl [--source NAME] [--base-url URL] [--limit N] [--json]   crawl the configured LoRA sources now",
  "  retrain [--encoder [--family flux|proving-ground]] [--json]  train a gate (or encoder) candidate; promote it if not",
  "                               worse on held-out LoRAs (a FLUX host bootstraps its encoder from the pool)",
  "  models list [--json] | models promote VERSION | models rollback VERSION   gate and encoder versions",
].join("\n");

/** Run one command line; resolves to the process exit code (0 ok, 2 bad input or usage). */
export async function main(argv: string[], io: CliIo): Promise<number> {
  const [group, command, ...rest] = argv;
  if (group === "pool" && command === "inspect") return inspectCommand(rest, io);
  const run = group === "pool" && command !== undefined ? () => poolCommand(command, rest, io)
    : group === "serve" ? () => serveCommand(argv.slice(1), io)
    : group === "imagine" ? () => imagineCommand(argv.slice(1), io)
    : group === "crawl" ? () => crawlCommand(argv.slice(1), io)
    : group === "retrain" ? () => retrainCommand(argv.slice(1), io)
    : group === "models" ? () => modelsCommand(argv.slice(1), io) : undefined;
  if (run) {
    try {
      return await run();
    } catch (error) {
      // Bad configuration and bad options (node:util parseArgs' ERR_PARSE_ARGS_* errors) are the user's to fix.
      const badOption = (error as { code?: string }).code?.startsWith("ERR_PARSE_ARGS_") ?? false;
      if (!(error instanceof ConfigError) && !badOption) throw error;
      io.stderr((error as Error).message);
      return 2;
    }
  }
  if (group === undefined || group === "--help" || group === "-h" || group === "help") {
    io.stdout(USAGE);
    return group === undefined ? 2 : 0;
  }
  io.stderr(`autolora: unknown command ${JSON.stringify(argv.slice(0, 2).join(" "))}\n${USAGE}`);
  return 2;
}
