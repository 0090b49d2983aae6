// Versions of the fusion gates: every candidate ever trained, with the metrics it was judged on and what became
// of it, and the one being served. The served file always sits at one path (data/models/gates/serving.safetensors,
// replaced by rename), so workers started or restarted at any time load the promoted version, and running ones
// are told to reload it. The registry is one JSON file, written atomically; other processes (`autolora models
// promote`) change it and `serve` notices.
import { copyFile, mkdir, readFile, rename, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { readSafetensorsHeader } from "../pool/safetensors.js";

export type VersionStatus = "serving" | "retired" | "refused";

export interface GateVersion {
  version: string;
  /** The version's own copy, under data/models/gates/. */
  file: string;
  status: VersionStatus;
  /** Held-out metrics (heldout_loss, both_correct, …) once measured. */
  metrics?: Record<string, number>;
  created_at: string;
  promoted_at?: string;
  /** Why a candidate was refused, or where a version came from. */
  note?: string;
}

interface RegistryFile {
  gates: GateVersion[];
}

export class ModelError extends Error {
  override readonly name = "ModelError";
  readonly code = "model";
}

export class ModelRegistry {
  private constructor(readonly dir: string, private data: RegistryFile) {}

  /** Open (or start) the registry in `dir`, serving `initialGates` (the bundle's) when it is new. */
  static async open(dir: string, initialGates: string): Promise<ModelRegistry> {
    await mkdir(join(dir, "gates"), { recursive: true });
    const registry = new ModelRegistry(dir, await readRegistry(join(dir, "registry.json")));
    if (registry.data.gates.length === 0) {
      const version = await gateVersion(initialGates);
      const file = join(dir, "gates", `${safe(version)}.safetensors`);
      await copyFile(initialGates, file);
      registry.data.gates.push({ version, file, status: "serving", created_at: new Date().toISOString(), promoted_at: new Date().toISOString(), note: `from ${initialGates}` });
      await registry.save();
      await registry.publish(file);
    }
    return registry;
  }

  /** The file workers load: always the serving version. */
  get servingPath(): string {
    return join(this.dir, "gates", "serving.safetensors");
  }

  /** Re-read the file (another process may have promoted); true if the serving version changed. */
  async refresh(): Promise<boolean> {
    const before = this.serving().version;
    this.data = await readRegistry(join(this.dir, "registry.json"));
    return this.serving().version !== before;
  }

  list(): GateVersion[] {
    return this.data.gates.map((entry) => ({ ...entry }));
  }

  serving(): GateVersion {
    const serving = this.data.gates.find((entry) => entry.status === "serving");
    if (!serving) throw new ModelError(`${join(this.dir, "registry.json")} names no serving gates; promote a version`);
    return serving;
  }

  get(version: string): GateVersion | undefined {
    return this.data.gates.find((entry) => entry.version === version);
  }

  async setMetrics(version: string, metrics: Record<string, number>): Promise<void> {
    const entry = this.require(version);
    entry.metrics = metrics;
    await this.save();
  }

  /** Keep a candidate's file and metrics; it is served only once promoted. */
  async addCandidate(file: string, metrics: Record<string, number>, status: "refused" | "retired", note: string): Promise<GateVersion> {
    const version = await gateVersion(file);
    if (this.get(version)) throw new ModelError(`a gate version ${version} is already registered`);
    const kept = join(this.dir, "gates", `${safe(version)}.safetensors`);
    await copyFile(file, kept);
    const entry: GateVersion = { version, file: kept, status, metrics, created_at: new Date().toISOString(), note };
    this.data.gates.push(entry);
    await this.save();
    return entry;
  }

  /** Serve `version` (promotion, or a rollback to an earlier one); the one served before is retired. */
  async promote(version: string, note?: string): Promise<GateVersion> {
    const entry = this.require(version);
    if (entry.status === "serving") return entry;
    await stat(entry.file).catch(() => { throw new ModelError(`the file of ${version} (${entry.file}) is gone; it cannot be served`); });
    await this.publish(entry.file);
    for (const other of this.data.gates) if (other.status === "serving") other.status = "retired";
    entry.status = "serving";
    entry.promoted_at = new Date().toISOString();
    if (note) entry.note = note;
    await this.save();
    return entry;
  }

  private require(version: string): GateVersion {
    const entry = this.get(version);
    if (!entry) throw new ModelError(`no gate version ${version}; \`autolora models list\` shows them`);
    return entry;
  }

  /** Put `file` at the serving path by rename, so a worker never reads half a file. */
  private async publish(file: string): Promise<void> {
    const temporary = `${this.servingPath}.${process.pid}.tmp`;
    await copyFile(file, temporary);
    await rename(temporary, this.servingPath);
  }

  private async save(): Promise<void> {
    const path = join(this.dir, "registry.json");
    await writeAtomically(path, JSON.stringify(this.data, null, 1));
  }
}

async function readRegistry(path: string): Promise<RegistryFile> {
  try {
    const parsed = JSON.parse(await readFile(path, "utf8")) as Partial<RegistryFile>;
    return { gates: Array.isArray(parsed.gates) ? parsed.gates : [] };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return { gates: [] };
    throw new ModelError(`${path} is unreadable (${error instanceof Error ? error.message : String(error)})`);
  }
}

async function writeAtomically(path: string, text: string): Promise<void> {
  const temporary = `${path}.${process.pid}.tmp`;
  await writeFile(temporary, text);
  await rename(temporary, path);
}

/** The version a gate file records in its safetensors metadata. */
export async function gateVersion(file: string): Promise<string> {
  const header = await readSafetensorsHeader(file).catch((error: unknown) => {
    throw new ModelError(`${file} is not a gate file: ${error instanceof Error ? error.message : String(error)}`);
  });
  const version = header.metadata?.version;
  if (!version) throw new ModelError(`${file} records no gate version in its metadata`);
  return version;
}

function safe(version: string): string {
  return version.replace(/[^\w.=,-]/g, "_");
}
