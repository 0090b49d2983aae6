// `autolora models list|promote|rollback VERSION` and `autolora retrain`: the gate versions, by hand. A running
// `autolora serve` notices a change of the served version within seconds and has its workers reload it.
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { loadConfig } from "../config/load.js";
import { openModels, openPool, workerPython } from "../host.js";
import { GenerationStore } from "../pipeline/generations.js";
import { ModelError } from "../models/registry.js";
import { retrainGates, writeRatedExamples } from "../models/retrain.js";
import { stateFile } from "../scheduler/jobs.js";
import { JobBusyError } from "../scheduler/state.js";
import type { CliIo } from "./main.js";

export async function modelsCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, strict: true, options: { json: { type: "boolean" } } });
  const [action, version, ...extra] = positionals;
  const { config } = loadConfig(io.env ?? process.env);
  const registry = await openModels(config);
  if (!registry) {
    io.stderr(`the bundle (${config.bundle_dir}) has no gates, so there are no gate versions to manage`);
    return 2;
  }
  if (action === "list" && !version) {
    const versions = registry.list();
    if (values.json) io.stdout(JSON.stringify(versions));
    for (const entry of values.json ? [] : versions) {
      const metrics = Object.entries(entry.metrics ?? {}).filter(([name]) => name !== "pairs" && name !== "images")
        .map(([name, value]) => `${name} ${Number(value).toFixed(4)}`).join(", ");
      io.stdout(`${entry.status === "serving" ? "*" : " "} ${entry.version}  ${entry.status}  ${metrics || "not measured yet"}  ${entry.note ?? ""}`.trimEnd());
    }
    return 0;
  }
  if ((action === "promote" || action === "rollback") && version && extra.length === 0) {
    try {
      const entry = await registry.promote(version, `${action === "promote" ? "promoted" : "rolled back to"} by hand`);
      io.stdout(`serving ${entry.version}; a running \`autolora serve\` has its workers reload it within seconds`);
      return 0;
    } catch (error) {
      if (!(error instanceof ModelError)) throw error;
      io.stderr(error.message);
      return 2;
    }
  }
  io.stderr("usage: autolora models list [--json] | autolora models promote VERSION | autolora models rollback VERSION");
  return 2;
}

export async function retrainCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, strict: true, options: { json: { type: "boolean" } } });
  if (positionals.length > 0) {
    io.stderr("usage: autolora retrain [--json]");
    return 2;
  }
  const { config } = loadConfig(io.env ?? process.env);
  const registry = await openModels(config);
  if (!registry) {
    io.stderr(`the bundle (${config.bundle_dir}) has no gates to retrain`);
    return 2;
  }
  const state = stateFile(config);
  const dataDir = resolve(config.data_dir);
  try {
    // No workers here: a running `serve` follows the registry and reloads its own.
    const outcome = await state.exclusive("retrain", () => retrainGates({
      registry, python: workerPython(config), bundleDir: resolve(config.bundle_dir), workers: () => [],
      steps: config.scheduler.retrain.steps, metrics: config.scheduler.retrain.metrics, evalPairs: config.scheduler.retrain.eval_pairs,
      log: values.json ? undefined : io.stderr,
      ratedExamples: async (folder) => writeRatedExamples(await GenerationStore.open(config.lancedb_uri || join(dataDir, "lancedb")),
        (await openPool(config)).store, dataDir, folder, config.scheduler.retrain.rated_min_score),
    }));
    await state.update((saved) => {
      saved.jobs.retrain = { ...saved.jobs.retrain, lastFinished: new Date().toISOString(), lastOutcome: "ok", lastSummary: outcome.summary, pendingLoras: 0 };
    });
    io.stdout(values.json ? JSON.stringify(outcome) : outcome.summary);
    return 0;
  } catch (error) {
    if (!(error instanceof JobBusyError)) throw error;
    io.stderr(`retraining is already running (${error.message})`);
    return 2;
  }
}
