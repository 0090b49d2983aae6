// The pool's scheduled jobs: "crawl" visits every configured source in turn, "maintenance" keeps the LanceDB
// tables compact and the ANN index current. `autolora crawl` and the scheduler share `crawlSources`.
import { join, resolve } from "node:path";
import type { Config } from "../config/schema.js";
import type { Secrets } from "../config/secrets.js";
import type { CrawlSourceFactory } from "../plugins.js";
import type { LoraIndex } from "../pool/index.js";
import type { IngestMetadata, IngestResult } from "../pool/ingest.js";
import { crawl, type CrawlReport } from "./crawler.js";
import type { Job } from "./scheduler.js";
import type { CrawlSource } from "./source.js";
import { StateFile } from "./state.js";

export function stateFile(config: Config): StateFile {
  return new StateFile(join(resolve(config.data_dir), "scheduler", "state.json"));
}

/** The configured sources (or only `only`), made by the plugins' factories. */
export function crawlSources(config: Config, secrets: Secrets, factories: CrawlSourceFactory[],
  choice: { only?: string; baseUrl?: string } = {}): CrawlSource[] {
  const known = factories.map((factory) => factory.name);
  const names = choice.only ? [choice.only] : config.scheduler.sources;
  for (const name of names) {
    if (!known.includes(name)) throw new Error(`no crawl source ${name}; the sources are ${known.join(", ")}`);
  }
  if (choice.baseUrl && names.length !== 1) throw new Error("--base-url applies to one source: name it with --source");
  return names.map((name) => factories.find((factory) => factory.name === name)!.create({ config, secrets, baseUrl: choice.baseUrl }));
}

export interface CrawlJobDependencies {
  config: Config;
  sources: CrawlSource[];
  state: StateFile;
  ingest: (path: string, metadata: IngestMetadata) => Promise<IngestResult>;
  limit?: number;
  log?: (line: string) => void;
}

/** Crawl each source in turn; a source that fails does not stop the others. */
export async function crawlAll(deps: CrawlJobDependencies, signal?: AbortSignal): Promise<Array<CrawlReport | { source: string; error: string }>> {
  const reports: Array<CrawlReport | { source: string; error: string }> = [];
  for (const source of deps.sources) {
    try {
      reports.push(await crawl(source, {
        state: deps.state, ingest: deps.ingest, tempDir: join(resolve(deps.config.data_dir), "tmp"),
        maxBytes: deps.config.scheduler.max_download_mb * 1e6, allowLoopback: deps.config.scheduler.allow_loopback,
        limit: deps.limit, signal, log: deps.log,
      }));
    } catch (error) {
      if (signal?.aborted) throw error;
      reports.push({ source: source.name, error: error instanceof Error ? error.message : String(error) });
    }
  }
  return reports;
}

export function summarize(reports: Awaited<ReturnType<typeof crawlAll>>): string {
  return reports.map((report) => "error" in report ? `${report.source}: failed (${report.error})`
    : `${report.source}: ${report.added} added, ${report.existed} already there, ${report.refused.length} refused, ${report.failed.length} to retry`).join("; ") || "no sources configured";
}

export interface PoolJobDependencies extends CrawlJobDependencies {
  index: LoraIndex;
  /** Start retraining the gates in the background (crawls added enough LoRAs); absent where there are none. */
  startRetrain?: () => void;
}

/** Crawling and index upkeep; the models' jobs (retraining, re-embedding) are in src/models/lifecycle.ts. */
export function poolJobs(deps: PoolJobDependencies): Job[] {
  const threshold = deps.config.scheduler.retrain.after_new_loras;
  return [
    {
      name: "crawl", schedule: deps.config.scheduler.crawl,
      run: async (signal) => {
        const reports = await crawlAll(deps, signal);
        const added = reports.reduce((sum, report) => sum + ("added" in report ? report.added : 0), 0);
        const state = await deps.state.update((saved) => {
          saved.jobs.retrain = { ...saved.jobs.retrain, pendingLoras: (saved.jobs.retrain?.pendingLoras ?? 0) + added };
        });
        if (deps.startRetrain && threshold > 0 && (state.jobs.retrain?.pendingLoras ?? 0) >= threshold) {
          deps.log?.(`[scheduler] ${state.jobs.retrain!.pendingLoras} new LoRAs since the last retrain: retraining`);
          deps.startRetrain();
        }
        return summarize(reports);
      },
    },
    { name: "maintenance", schedule: deps.config.scheduler.maintenance, run: async () => deps.index.maintain?.() ?? "nothing to maintain" },
  ];
}
