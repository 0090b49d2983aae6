// The sweep at pool open: what a dead process left (its lock, a partial copy, a stored file whose index row was
// never written, an abandoned download) goes; what a live process is adding, and every indexed file, stays.
import { spawn, type ChildProcess } from "node:child_process";
import { copyFile, mkdir, mkdtemp, readdir, utimes, writeFile } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import type { EmbedResult } from "../src/gpu/protocol.js";
import { ingestLora } from "../src/pool/ingest.js";
import { LanceLoraIndex } from "../src/pool/lancedb-index.js";
import { LoraStore, sha256File, StoreBusyError } from "../src/pool/store.js";
import { sweepPool } from "../src/pool/sweep.js";

const bundle = join(import.meta.dirname, "..", "bundle", "pool");
const hexagon = join(bundle, "shape-hexagon-01.safetensors");
const striped = join(bundle, "style-striped-01.safetensors");

async function fakeEmbed(path: string): Promise<EmbedResult> {
  const sha256 = await sha256File(path);
  return { sha256, format: "diffusers", family: "proving-ground", modules: 34, ranks: [4], unknown_keys: [],
    embedding: [1, 0, 0, 0], dim: 4, encoder_version: "test-enc" };
}

/** A pool holding the hexagon LoRA, indexed. */
async function pool() {
  const data = await mkdtemp(join(tmpdir(), "autolora-sweep-"));
  const store = new LoraStore(join(data, "pool"));
  const index = await LanceLoraIndex.open({ uri: join(data, "lancedb") });
  const deps = { store, index, embed: fakeEmbed };
  const indexed = (await ingestLora(hexagon, {}, deps)).lora.id;
  const lines: string[] = [];
  const sweep = () => sweepPool({ store, index }, { downloads: join(data, "tmp"), log: (line) => lines.push(line) });
  return { data, store, index, deps, indexed, lines, sweep };
}

/** What an add of `file` that stopped after storing it leaves: the stored copy, a partial one and the lock of `owner`. */
async function interruptedAdd(store: LoraStore, file: string, owner: { pid: number; host?: string }) {
  const sha256 = await sha256File(file);
  await copyFile(file, store.pathOf(sha256));
  await writeFile(join(store.root, `.${sha256}.0badc0de.partial`), "half a file");
  await writeFile(store.lockPathOf(sha256), JSON.stringify({ pid: owner.pid, host: owner.host ?? hostname(), nonce: "n" }));
  return sha256;
}

const children: ChildProcess[] = [];
afterEach(() => {
  for (const child of children.splice(0)) child.kill("SIGKILL");
});

/** A live process (sleeping) or the pid of one that has exited. */
async function liveProcess(): Promise<ChildProcess> {
  const child = spawn(process.execPath, ["-e", "setTimeout(() => {}, 120000)"], { stdio: "ignore" });
  children.push(child);
  await new Promise((resolve) => child.once("spawn", resolve));
  return child;
}
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
  await new Promise((resolve) => child.once("exit", resolve));
  return child.pid!;
}

describe("pool sweep", () => {
  it("removes a dead add's stored copy, partial copy and lock in one logged line, and the file goes in again", async () => {
    const { store, index, deps, indexed, lines, sweep } = await pool();
    const orphan = await interruptedAdd(store, striped, { pid: await deadPid() });
    const report = await sweep();
    expect(report).toMatchObject({ orphans: [orphan], partials: 1, staleLocks: 1 });
    expect(await readdir(store.root)).toEqual([`${indexed}.safetensors`]);
    expect(lines).toEqual([expect.stringMatching(new RegExp(`^\\[pool\\] swept .*1 stored file with no index row \\(${orphan.slice(0, 12)}\\)`))]);
    expect((await ingestLora(striped, {}, deps)).status).toBe("added");
    expect(await index.count()).toBe(2);
    expect((await sweep()).orphans).toEqual([]);
    expect(lines).toHaveLength(1); // nothing swept, nothing said
  });

  it("leaves alone what a live process is adding, and sweeps it once that process is gone", async () => {
    const { store, sweep } = await pool();
    const adder = await liveProcess();
    const adding = await interruptedAdd(store, striped, { pid: adder.pid! });
    expect(await sweep()).toMatchObject({ orphans: [], partials: 0, staleLocks: 0 });
    expect((await readdir(store.root)).sort()).toContain(`${adding}.safetensors`);
    adder.kill("SIGKILL");
    await new Promise((resolve) => adder.once("exit", resolve));
    expect((await sweep()).orphans).toEqual([adding]);
  });

  it("removes staged copies whose writer died or that sat untouched for an hour, and keeps a live writer's", async () => {
    const { store, indexed, sweep } = await pool();
    const writer = await liveProcess();
    const staged = (pid: number, tag: string) => join(store.root, `.incoming.${pid}.${tag}.partial`);
    const dead = staged(await deadPid(), "aa");
    const ours = staged(process.pid, "bb"); // this process is not writing it: left by an earlier process of this pid
    const live = staged(writer.pid!, "cc");
    const stale = staged(writer.pid!, "dd");
    for (const path of [dead, ours, live, stale]) await writeFile(path, "half a file");
    const twoHoursAgo = new Date(Date.now() - 2 * 3_600_000);
    await utimes(stale, twoHoursAgo, twoHoursAgo);
    expect(await sweep()).toMatchObject({ partials: 3 });
    expect((await readdir(store.root)).sort()).toEqual([`${indexed}.safetensors`, `.incoming.${writer.pid}.cc.partial`].sort());
  });

  it("trusts another machine's lock until it has gone unrefreshed for ten minutes", async () => {
    const { store, sweep } = await pool();
    const adding = await interruptedAdd(store, striped, { pid: 1, host: "another-machine" });
    expect((await sweep()).orphans).toEqual([]);
    const eleventhMinute = new Date(Date.now() - 11 * 60_000);
    await utimes(store.lockPathOf(adding), eleventhMinute, eleventhMinute);
    expect((await sweep()).orphans).toEqual([adding]);
  });

  it("removes a stored file with no row and no lock (a removal cut short) and an abandoned download, not a fresh one", async () => {
    const { data, store, sweep } = await pool();
    const removed = await sha256File(striped);
    await copyFile(striped, store.pathOf(removed));
    await mkdir(join(data, "tmp"));
    const abandoned = join(data, "tmp", "download-1234.part");
    const running = join(data, "tmp", "download-5678.part");
    await writeFile(abandoned, "old bytes");
    await writeFile(running, "new bytes");
    const twoHoursAgo = new Date(Date.now() - 2 * 3_600_000);
    await utimes(abandoned, twoHoursAgo, twoHoursAgo);
    expect(await sweep()).toMatchObject({ orphans: [removed], downloads: 1 });
    expect(await readdir(join(data, "tmp"))).toEqual(["download-5678.part"]);
  });

  it("makes a second add of the same LoRA wait for the lock, and says who holds it if it waits too long", async () => {
    const { store } = await pool();
    const sha256 = await sha256File(striped);
    const lock = await store.lock(sha256);
    const refused = await store.lock(sha256, 300).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(StoreBusyError);
    expect(refused).toMatchObject({ code: "store-busy", message: expect.stringContaining(`pid ${process.pid}`) });
    const waiting = store.lock(sha256, 30_000);
    await lock.release();
    await (await waiting).release();
    expect(await readdir(store.root)).not.toContain(`.${sha256}.lock`);
  });
});
