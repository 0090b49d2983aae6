// The journal of accepted jobs: what a restarted host takes up again.
import { mkdtemp, readdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect, it } from "vitest";
import { JobJournal, type JournalEntry } from "../src/pipeline/journal.js";

const entry = (id: string, at: string): JournalEntry => ({
  id, adapter: "slack", address: { channel: "C1", ts: "1.000100" }, prompt: `prompt ${id}`, user: "slack:U1", seeds: [7, 8],
  accepted_at: at,
});

it("keeps accepted jobs until they are finished, oldest first, with what became known about them", async () => {
  const folder = await mkdtemp(join(tmpdir(), "autolora-journal-"));
  const journal = new JobJournal(folder);
  await journal.accept(entry("job-b", "2026-12-03T10:00:02.000Z"));
  await journal.accept(entry("job-a", "2026-12-03T10:00:01.000Z"));
  await journal.update("job-b", { loras: ["1".repeat(64)] });
  // Read by another journal on the same folder, as a restarted host would.
  const reopened = await new JobJournal(folder).entries();
  expect(reopened.map((kept) => kept.id)).toEqual(["job-a", "job-b"]);
  expect(reopened[1]).toEqual({ ...entry("job-b", "2026-12-03T10:00:02.000Z"), loras: ["1".repeat(64)] });
  await journal.finish("job-a");
  expect((await journal.entries()).map((kept) => kept.id)).toEqual(["job-b"]);
});

it("does not bring back a finished job when an update was still being written", async () => {
  const journal = new JobJournal(await mkdtemp(join(tmpdir(), "autolora-journal-")));
  await journal.accept(entry("job-c", "2026-12-03T10:00:00.000Z"));
  const writes = [journal.update("job-c", { loras: [] }), journal.finish("job-c"), journal.update("job-c", { title: "late" })];
  await Promise.all(writes);
  expect(await journal.entries()).toEqual([]);
});

it("sets aside a file it cannot read, saying so, and refuses an entry that is not a job", async () => {
  const folder = await mkdtemp(join(tmpdir(), "autolora-journal-"));
  const lines: string[] = [];
  const journal = new JobJournal(folder, (line) => lines.push(line));
  await journal.accept(entry("job-d", "2026-12-03T10:00:00.000Z"));
  await writeFile(join(folder, "torn.json"), '{"id": "torn", "adap');
  expect((await journal.entries()).map((kept) => kept.id)).toEqual(["job-d"]);
  expect(lines.join("\n")).toMatch(/torn\.json is not a job this host can take up again; set aside as .*torn\.json\.bad/);
  expect((await readdir(folder)).sort()).toEqual(["job-d.json", "torn.json.bad"]);
  await expect(journal.accept({ ...entry("../escape", "2026-12-03T10:00:00.000Z") })).rejects.toThrow();
  expect((await readdir(folder)).sort()).toEqual(["job-d.json", "torn.json.bad"]);
});
