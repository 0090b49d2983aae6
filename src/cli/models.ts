// `autolora models list|promote|rollback VERSION` and `autolora retrain [--encoder]`: the versions of the gates
// and the LoRA encoder, by hand. A running `autolora serve` notices a change of a served version within seconds,
// has its workers reload it, and re-embeds the pool after an encoder change.
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { loadConfig } from "../config/load.js";
import { workerPython } from "../gpu/workers.js";
import { openModels, servesFlux } from "../models/lifecycle.js";
import { lancedbUri, openPool } from "../pool/open.js";
import { ModelError, type ModelRegistry } from "../models/registry.js";
import { bootstrapFluxEncoder, retrainModel, writeBootstrapExamples, writeCaptionedLoras, writeRatedExamples } from "../models/retrain.js";
import { GenerationStore } from "../pipeline/generations.js";
import { stateFile } from "../scheduler/jobs.js";
import { JobBusyError } from "../scheduler/state.js";
import type { CliIo } from "./main.js";

export async function modelsCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, strict: true, options: { json: { type: "boolean" } } });
  const [action, version, ...extra] = positionals;
  const { config } = loadConfig(io.env ?? process.env);
  const models = await openModels(config);
  const registries = [models.gates, models.encoder, models.fluxEncoder].filter((registry): registry is ModelRegistry => registry !== undefined);
  if (registries.length === 0) {
    io.stderr(`the bundle (${config.bundle_dir}) has no gates or encoder, so there are no versions to manage`);
    return 2;
  }
  if (action === "list" && !version) {
    const versions = registries.flatMap((registry) => registry.list().map((entry) => ({ kind: registry.kind.name, ...entry })));
    if (values.json) io.stdout(JSON.stringify(versions));
    for (const entry of values.json ? [] : versions) {
      const metrics = Object.entries(entry.metrics ?? {}).filter(([name]) => !["pairs", "images", "queries", "candidates"].includes(name))
        .map(([name, value]) => `${name} ${Number(value).toFixed(4)}`).join(", ");
      io.stdout(`${entry.status === "serving" ? "*" : " "} ${entry.kind} ${entry.version}  ${entry.status}  ${metrics || "not measured yet"}  ${entry.note ?? ""}`.trimEnd());
    }
    return 0;
  }
  if ((action === "promote" || action === "rollback") && version && extra.length === 0) {
    const registry = registries.find((candidate) => candidate.get(version));
    if (!registry) {
      io.stderr(`no version ${version}; \`autolora models list\` shows them`);
      return 2;
    }
    try {
      const entry = await registry.promote(version, `${action === "promote" ? "promoted" : "rolled back to"} by hand`);
      io.stdout(`serving ${registry.kind.name} ${entry.version}; a running \`autolora serve\` has its workers reload it within seconds`);
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
  const { values, positionals } = parseArgs({
    args, allowPositionals: true, strict: true,
    options: { json: { type: "boolean" }, encoder: { type: "boolean" }, family: { type: "string" } },
  });
  if (positionals.length > 0 || (values.family !== undefined && !["flux", "proving-ground"].includes(values.family))) {
    io.stderr("usage: autolora retrain [--encoder [--family flux|proving-ground]] [--json]");
    return 2;
  }
  const { config } = loadConfig(io.env ?? process.env);
  const models = await openModels(config);
  // The encoder of the family the workers run: a FLUX host bootstraps its own from the pool (none ships).
  const flux = values.encoder && (values.family ?? (servesFlux(config) ? "flux" : "proving-ground")) === "flux";
  const registry = flux ? models.fluxEncoder : values.encoder ? models.encoder : models.gates;
  if (!registry) {
    io.stderr(flux ? "no FLUX worker is configured (workers.local[].model: a FLUX folder); there is no flux encoder to train"
      : `the bundle (${config.bundle_dir}) has no ${values.encoder ? "LoRA encoder" : "gates"} to retrain`);
    return 2;
  }
  const state = stateFile(config);
  const dataDir = resolve(config.data_dir);
  const settings = config.scheduler.retrain;
  const job = flux ? "retrain-encoder-flux" : values.encoder ? "retrain-encoder" : "retrain";
  const common = {
    registry, python: workerPython(config), bundleDir: resolve(config.bundle_dir), workers: () => [],
    log: values.json ? undefined : io.stderr,
  };
  try {
    // No workers here: a running `serve` follows the registry, reloads its own and re-embeds the pool.
    const outcome = await state.exclusive(job, async () => flux
      ? bootstrapFluxEncoder({
        ...common, steps: settings.encoder_steps,
        examples: async (folder) => {
          const pool = await openPool(config, io.stderr);
          return writeBootstrapExamples(pool.index, pool.store, folder, "flux");
        },
      })
      : retrainModel({
        ...common,
        steps: values.encoder ? settings.encoder_steps : settings.steps, metrics: values.encoder ? settings.encoder_metrics : settings.metrics,
        evalPairs: settings.eval_pairs,
        extras: async (folder) => {
          const pool = await openPool(config, io.stderr);
          if (values.encoder) return writeCaptionedLoras(pool.index, pool.store, folder);
          return writeRatedExamples(await GenerationStore.open(lancedbUri(config)), pool.store, dataDir, folder, settings.rated_min_score);
        },
      }));
    await state.update((saved) => {
      saved.jobs[job] = { ...saved.jobs[job], lastFinished: new Date().toISOString(), lastOutcome: "ok", lastSummary: outcome.summary, ...(values.encoder ? {} : { pendingLoras: 0 }) };
    });
    io.stdout(values.json ? JSON.stringify(outcome) : outcome.summary);
    return 0;
  } catch (error) {
    if (!(error instanceof JobBusyError)) throw error;
    io.stderr(`retraining is already running (${error.message})`);
    return 2;
  }
}
