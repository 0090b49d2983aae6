#!/usr/bin/env node
// The `autolora` command: the compiled host (npm run build) behind the real process's streams and exit code.
import { main } from "../dist/cli/main.js";

process.exitCode = await main(process.argv.slice(2), {
  stdout: (line) => process.stdout.write(`${line}\n`),
  stderr: (line) => process.stderr.write(`${line}\n`),
});
