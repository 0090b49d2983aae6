// The models' life as scheduler jobs: a promotion made by another process reaches this process's workers, LoRAs
// embedded by another encoder are re-embedded, enough new ratings start a retrain, and /retrain now starts one
// unless one is running.
import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { describe, expect, it } from "vitest";
import type { Config } from "../src/config/schema.js";
import { loadConfig } from "../src/config/load.js";
import type { WorkerBackend } from "../src/gpu/backend.js";
import type { Workers } from "../src/gpu/workers.js";
import { modelLifecycle } from "../src/models/lifecycle.js";
import { ModelRegistry, type ModelKind } from "../src/models/registry.js";
import type { GenerationStore } from "../src/pipeline/generations.js";
import type { Pool } from "../src/pool/open.js";
import { StateFile } from "../src/scheduler/state.js";

// Gate "files" whose version is their name, so a test can make versions without training any.
const NAMED_GATES: ModelKind = { name: "gates", servingName: "serving.safetensors", extension: ".safetensors", versionOf: async (file) => basename(file, ".safetensors") };

async function setting(afterNewRatings = 0) {
  const root = await mkdtemp(join(tmpdir(), "autolora-lifecycle-"));
  const first = join(root, "gates-a.safetensors");
  await writeFile(first, "a");
  const gates = await ModelRegistry.open(join(root, "models"), first, NAMED_GATES);
  const reloads: string[] = [];
  const worker = {
    id: "local-1",
    health: async () => ({ encoder_version: "enc-2" }),
    reloadGates: async (path: string) => { reloads.push(path); return "reloaded"; },
  } as unknown as WorkerBackend;
  const triggered: string[] = [];
  const running = new Set<string>();
  let oldEmbeddings = 3;
  const defaults = loadConfig({}).config;
  const config: Config = { ...defaults, data_dir: root, scheduler: { ...defaults.scheduler, retrain: { ...defaults.scheduler.retrain, after_new_ratings: afterNewRatings } } };
  const lifecycle = modelLifecycle({
    config, models: { gates }, log: () => undefined,
    workers: { source: { ready: () => [worker], whenAnyReady: async () => true } } as unknown as Workers,
    pool: { index: { embeddedByOther: async (version: string) => (version === "enc-2" ? Array(oldEmbeddings).fill({}) : []) } } as unknown as Pool,
    generations: { ratingsSince: async () => 5 } as unknown as GenerationStore,
    state: new StateFile(join(root, "scheduler", "state.json")),
    scheduler: () => ({ trigger: async (name: string) => { triggered.push(name); return {} as never; }, isRunning: (name: string) => running.has(name) }),
  });
  const run = (name: string) => lifecycle.jobs.find((job) => job.name === name)!.run(new AbortController().signal);
  return { root, gates, reloads, triggered, running, lifecycle, run, embedded: (count: number) => { oldEmbeddings = count; } };
}

describe("the models' lifecycle", () => {
  it("follows a promotion another process made, reloading this process's workers once", async () => {
    const world = await setting();
    world.embedded(0);
    expect(await world.run("follow-models")).toBe("");
    // `autolora models promote` elsewhere: its own view of the same registry.
    const other = await ModelRegistry.open(join(world.root, "models"), join(world.root, "gates-a.safetensors"), NAMED_GATES);
    const second = join(world.root, "gates-b.safetensors");
    await writeFile(second, "b");
    await other.addCandidate(second, { heldout_loss: 0.1 }, "retired", "trained elsewhere");
    await other.promote("gates-b");
    expect(await world.run("follow-models")).toBe("gates gates-b promoted elsewhere: 1 worker(s) reloaded");
    expect(world.reloads).toEqual([world.gates.servingPath]);
    expect(await world.run("follow-models")).toBe("");
    expect(world.reloads).toHaveLength(1);
  });

  it("takes up a new bundle's gates, even under the same version name, and retires those trained for the old one", async () => {
    const root = await mkdtemp(join(tmpdir(), "autolora-bundle-"));
    const bundled = join(root, "gates-0.safetensors");
    await writeFile(bundled, "the first bundle's gates");
    const models = join(root, "models");
    const registry = await ModelRegistry.open(models, bundled, NAMED_GATES);
    const trained = join(root, "gates-1.safetensors");
    await writeFile(trained, "retrained on the first bundle's model");
    await registry.addCandidate(trained, { heldout_loss: 0.1 }, "retired", "trained");
    await registry.promote("gates-1");
    // Reopened on the same bundle: nothing changes.
    expect((await ModelRegistry.open(models, bundled, NAMED_GATES)).serving().version).toBe("gates-1");
    // A new bundle with gates of the same name: they are served, under a name of their own.
    await writeFile(bundled, "the second bundle's gates");
    const upgraded = await ModelRegistry.open(models, bundled, NAMED_GATES);
    const serving = upgraded.serving();
    expect(serving.version).toMatch(/^gates-0\+[0-9a-f]{8}$/);
    expect(serving.note).toMatch(/a new bundle/);
    expect(await readFile(upgraded.servingPath, "utf8")).toBe("the second bundle's gates");
    expect(upgraded.list().map((entry) => [entry.version, entry.status])).toEqual([
      ["gates-0", "retired"], ["gates-1", "retired"], [serving.version, "serving"]]);
    // And from then on it is the bundle this registry knows.
    expect((await ModelRegistry.open(models, bundled, NAMED_GATES)).list()).toHaveLength(3);
  });

  it("re-embeds, in the background, LoRAs that another encoder embedded", async () => {
    const world = await setting();
    expect(await world.run("follow-models")).toBe("some LoRAs were embedded by another encoder than enc-2: re-embedding them in the background");
    expect(world.triggered).toEqual(["reembed"]);
    expect(await world.run("follow-models")).toBe(""); // checked once at start, then after each encoder change
  });

  it("starts a retrain after enough new ratings, unless one is running", async () => {
    const world = await setting(5);
    expect(await world.run("ratings-watch")).toBe("5+ new ratings since the last retrain: retraining");
    world.running.add("retrain");
    expect(await world.run("ratings-watch")).toBe("");
    expect(await world.lifecycle.retrainNow!()).toBe("retraining is already running; /pool status shows when it ends");
    expect(world.triggered).toEqual(["retrain"]);
    expect((await setting(0)).lifecycle.jobs.map((job) => job.name)).toEqual(["reembed", "follow-models", "retrain"]);
  });
});
