// The `autolora` command line. Each subcommand is a function of its arguments and two output streams, so tests
// run it in-process; bin/autolora.js only wires it to the real process.
import { inspectCommand } from "./pool-inspect.js";

export interface CliIo {
  stdout: (line: string) => void;
  stderr: (line: string) => void;
}

const USAGE = [
  "usage: autolora <command>",
  "  pool inspect FILE [--json]   the format, model family, module count and ranks of a LoRA file",
].join("\n");

/** Run one command line; resolves to the process exit code (0 ok, 2 bad input or usage). */
export async function main(argv: string[], io: CliIo): Promise<number> {
  const [group, command, ...rest] = argv;
  if (group === "pool" && command === "inspect") return inspectCommand(rest, io);
  if (group === undefined || group === "--help" || group === "-h" || group === "help") {
    io.stdout(USAGE);
    return group === undefined ? 2 : 0;
  }
  io.stderr(`autolora: unknown command ${JSON.stringify(argv.slice(0, 2).join(" "))}\n${USAGE}`);
  return 2;
}
