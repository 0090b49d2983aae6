// `autolora crawl`: one crawl now, of every configured source or the one named, with the configured workers
// embedding what it finds. Shares the scheduler's state and lock, so it never runs beside a scheduled crawl and
// resumes where an interrupted one stopped.
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { loadConfig } from "../config/load.js";
import { builtinPlugin } from "../builtins.js";
import { startWorkers } from "../gpu/workers.js";
import { openModels } from "../models/lifecycle.js";
import { openPool } from "../pool/open.js";
import { PluginRegistry } from "../plugins.js";
import { ingestLora } from "../pool/ingest.js";
import { TextEncoder } from "../pipeline/text-encoder.js";
import { crawlAll, crawlSources, stateFile, summarize } from "../scheduler/jobs.js";
import { JobBusyError } from "../scheduler/state.js";
import type { CliIo } from "./main.js";

export async function crawlCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args, allowPositionals: true, strict: true,
    options: { source: { type: "string" }, "base-url": { type: "string" }, limit: { type: "string" }, json: { type: "boolean" } },
  });
  const limit = values.limit === undefined ? undefined : Number(values.limit);
  if (positionals.length > 0 || (limit !== undefined && !(Number.isInteger(limit) && limit > 0))) {
    io.stderr("usage: autolora crawl [--source NAME] [--base-url URL] [--limit N] [--json]   (--limit: a whole number of new LoRAs)");
    return 2;
  }
  const { config, secrets } = loadConfig(io.env ?? process.env);
  const plugins = new PluginRegistry(config, io.stderr);
  await plugins.use(builtinPlugin);
  await plugins.load(config.plugins);
  let sources;
  try {
    sources = crawlSources(config, secrets, plugins.crawlSources, { only: values.source, baseUrl: values["base-url"] });
  } catch (error) {
    io.stderr(error instanceof Error ? error.message : String(error));
    return 2;
  }
  const state = stateFile(config);
  const pool = await openPool(config, io.stderr);
  const workers = await startWorkers(config, secrets, io.stderr, await openModels(config));
  const encoder = await TextEncoder.load(resolve(config.text_encoder_dir)).catch(async (error: unknown) => {
    await workers.stop();
    throw error;
  });
  const controller = new AbortController();
  const interrupt = () => controller.abort(new Error("interrupted; the next crawl resumes here"));
  process.once("SIGINT", interrupt);
  try {
    const reports = await state.exclusive("crawl", () => crawlAll({
      config, sources, state, limit, log: values.json ? undefined : io.stderr,
      ingest: (path, metadata) => ingestLora(path, metadata, { ...pool, embed: (file) => workers.dispatcher.embed(file), embedText: encoder }),
    }, controller.signal));
    await state.update((saved) => {
      saved.jobs.crawl = { ...saved.jobs.crawl, lastFinished: new Date().toISOString(), lastOutcome: "ok", lastSummary: summarize(reports) };
    });
    if (values.json) io.stdout(JSON.stringify(reports));
    else {
      for (const report of reports) {
        if ("error" in report) io.stdout(`${report.source}: failed: ${report.error}`);
        else {
          io.stdout(`${report.source}: ${report.added} added, ${report.existed} already in the pool, ${report.skipped} seen before, ` +
            `${report.refused.length} refused, ${report.failed.length} to retry (${report.pages} pages, ${(report.timings.total_ms / 1000).toFixed(1)} s: ` +
            `listing ${(report.timings.listing_ms / 1000).toFixed(1)} s, download ${(report.timings.download_ms / 1000).toFixed(1)} s, ingest ${(report.timings.ingest_ms / 1000).toFixed(1)} s)`);
          for (const refused of report.refused) io.stdout(`  refused ${refused.key}: ${refused.reason}`);
        }
      }
    }
    return reports.some((report) => "error" in report) ? 1 : 0;
  } catch (error) {
    if (error instanceof JobBusyError) {
      io.stderr(`a crawl is already running (${error.message}); try again when it ends`);
      return 2;
    }
    throw error;
  } finally {
    process.off("SIGINT", interrupt);
    await Promise.all([workers.stop(), encoder.close()]);
  }
}
