// After a restart: the jobs the host had accepted but not answered (its journal) are answered on their own
// acknowledgements, reopened by the adapter that posted them. A job whose adapter is not running now stays
// journaled for a later start.
import type { JobJournal } from "../pipeline/journal.js";
import type { ChatAdapter } from "../plugins.js";
import type { ChatCore } from "./core.js";

/** Take up every journaled job whose adapter runs; resolves once each has been answered (or failed). */
export async function resumeJobs(journal: JobJournal, core: ChatCore, adapters: ChatAdapter[], log: (line: string) => void): Promise<number> {
  const entries = await journal.entries();
  const resumed: Array<Promise<void>> = [];
  const left = new Map<string, number>();
  for (const entry of entries) {
    const adapter = adapters.find((candidate) => candidate.name === entry.adapter);
    const handle = adapter?.reopen?.(entry.address);
    if (!handle) {
      left.set(entry.adapter, (left.get(entry.adapter) ?? 0) + 1);
      continue;
    }
    resumed.push(core.resume(entry, handle));
  }
  if (resumed.length > 0) log(`[jobs] taking up ${resumed.length} job(s) accepted before the restart`);
  for (const [adapter, count] of left) {
    log(`[jobs] ${count} job(s) accepted through ${adapter} wait for it to run again (it is not running, or cannot reopen its messages)`);
  }
  await Promise.all(resumed);
  return resumed.length;
}
