// Versions of a trained model (the fusion gates, the LoRA encoder): every candidate ever trained, with the
// metrics it was judged on and what became of it, and the one being served. The served copy always sits at one
// path (data/models/<kind>/serving…, replaced by rename), so workers started or restarted at any time load the
// promoted version, and running ones are told to reload it. Each kind's registry is one JSON file, written
// atomically; other processes (`autolora models promote`) change it and `serve` notices.
import { createHash } from "node:crypto";
import { copyFile, cp, mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { readSafetensorsHeader } from "../pool/safetensors.js";

/** What a kind of model is stored as, and how its version is read. */
export interface ModelKind {
  name: "gates" | "encoder" | "encoder-flux";
  /** The served copy's name inside the kind's folder. */
  servingName: string;
  /** A version's copy is a file with this extension, or a folder ("" ). */
  extension: string;
  versionOf(path: string): Promise<string>;
}

export const GATES: ModelKind = { name: "gates", servingName: "serving.safetensors", extension: ".safetensors", versionOf: gateVersion };
export const ENCODER: ModelKind = { name: "encoder", servingName: "serving", extension: "", versionOf: encoderVersion };
/** The LoRA encoder of the `flux` family: none ships, so its registry starts empty and the first version is one
 *  bootstrapped from the pool (`autolora retrain --encoder` on a FLUX host). */
export const FLUX_ENCODER: ModelKind = { name: "encoder-flux", servingName: "serving", extension: "", versionOf: encoderVersion };

export type VersionStatus = "serving" | "retired" | "refused";

export interface ModelVersion {
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
  versions: ModelVersion[];
  /** The sha256 of the bundle's artifact this registry last took up (see `open`). */
  bundle_sha256?: string;
}

export class ModelError extends Error {
  override readonly name = "ModelError";
  readonly code = "model";
}

export class ModelRegistry {
  private constructor(readonly dir: string, readonly kind: ModelKind, private data: RegistryFile) {}

  /**
   * Open (or start) the registry of `kind` under `root`, serving `initial` (the bundle's) when it is new. When the
   * bundle's artifact has changed since the registry took it up (a new bundle: its gates belong to its own base
   * model, its encoder to its own pool), the new one is served and every earlier version retired: versions
   * trained for the earlier bundle do not fit the new model, and bundles' version names repeat (seed and steps).
   * Without `initial` (a kind nothing ships for) the registry may serve nothing until a version is promoted.
   */
  static async open(root: string, initial: string | undefined, kind: ModelKind = GATES): Promise<ModelRegistry> {
    const dir = join(root, kind.name);
    await mkdir(join(dir, "versions"), { recursive: true });
    const registry = new ModelRegistry(dir, kind, await readRegistry(join(dir, "registry.json")));
    if (initial === undefined) return registry;
    const bundle = await fingerprint(initial);
    if (registry.data.versions.length === 0) {
      await registry.takeUp(initial, bundle, `from ${initial}`);
    } else {
      // A registry written before fingerprints were kept: its first version is the copy it took of the bundle's.
      registry.data.bundle_sha256 ??= await fingerprint(registry.data.versions[0]!.file).catch(() => undefined);
      if (registry.data.bundle_sha256 !== bundle) {
        await registry.takeUp(initial, bundle, `from ${initial}, a new bundle: the versions before it were for the earlier bundle's model`);
      }
    }
    return registry;
  }

  /** Serve a copy of the bundle's artifact as a new version (suffixed when its name is taken) and remember it. */
  private async takeUp(initial: string, bundle: string, note: string): Promise<void> {
    const named = await this.kind.versionOf(initial);
    const version = this.get(named) ? `${named}+${bundle.slice(0, 8)}` : named;
    const file = join(this.dir, "versions", `${safe(version)}${this.kind.extension}`);
    await rm(file, { recursive: true, force: true });
    await copyArtifact(initial, file);
    const now = new Date().toISOString();
    for (const other of this.data.versions) if (other.status === "serving") other.status = "retired";
    this.data.versions = this.data.versions.filter((entry) => entry.version !== version);
    this.data.versions.push({ version, file, status: "serving", created_at: now, promoted_at: now, note });
    this.data.bundle_sha256 = bundle;
    await this.save();
    await this.publish(file);
  }

  /** What workers load: always the serving version. */
  get servingPath(): string {
    return join(this.dir, this.kind.servingName);
  }

  /** Re-read the file (another process may have promoted); true if the serving version changed. */
  async refresh(): Promise<boolean> {
    const before = this.servingVersion();
    this.data = await readRegistry(join(this.dir, "registry.json"));
    return this.servingVersion() !== before;
  }

  /** Whether a version is served (a registry that started empty serves none until its first promotion). */
  hasServing(): boolean {
    return this.servingVersion() !== undefined;
  }

  private servingVersion(): string | undefined {
    return this.data.versions.find((entry) => entry.status === "serving")?.version;
  }

  list(): ModelVersion[] {
    return this.data.versions.map((entry) => ({ ...entry }));
  }

  serving(): ModelVersion {
    const serving = this.data.versions.find((entry) => entry.status === "serving");
    if (!serving) throw new ModelError(`${join(this.dir, "registry.json")} names no serving ${this.kind.name}; promote a version`);
    return serving;
  }

  get(version: string): ModelVersion | undefined {
    return this.data.versions.find((entry) => entry.version === version);
  }

  async setMetrics(version: string, metrics: Record<string, number>): Promise<void> {
    const entry = this.require(version);
    entry.metrics = metrics;
    await this.save();
  }

  /** Keep a candidate's file and metrics; it is served only once promoted. */
  async addCandidate(file: string, metrics: Record<string, number>, status: "refused" | "retired", note: string): Promise<ModelVersion> {
    const version = await this.kind.versionOf(file);
    if (this.get(version)) throw new ModelError(`a ${this.kind.name} version ${version} is already registered`);
    const kept = join(this.dir, "versions", `${safe(version)}${this.kind.extension}`);
    await copyArtifact(file, kept);
    const entry: ModelVersion = { version, file: kept, status, metrics, created_at: new Date().toISOString(), note };
    this.data.versions.push(entry);
    await this.save();
    return entry;
  }

  /** Serve `version` (promotion, or a rollback to an earlier one); the one served before is retired. */
  async promote(version: string, note?: string): Promise<ModelVersion> {
    const entry = this.require(version);
    if (entry.status === "serving") return entry;
    await stat(entry.file).catch(() => { throw new ModelError(`the file of ${version} (${entry.file}) is gone; it cannot be served`); });
    await this.publish(entry.file);
    for (const other of this.data.versions) if (other.status === "serving") other.status = "retired";
    entry.status = "serving";
    entry.promoted_at = new Date().toISOString();
    if (note) entry.note = note;
    await this.save();
    return entry;
  }

  private require(version: string): ModelVersion {
    const entry = this.get(version);
    if (!entry) throw new ModelError(`no ${this.kind.name} version ${version}; \`autolora models list\` shows them`);
    return entry;
  }

  /** Put `file` at the serving path by rename, so a worker never reads half of it. */
  private async publish(file: string): Promise<void> {
    const temporary = `${this.servingPath}.${process.pid}.tmp`;
    await rm(temporary, { recursive: true, force: true });
    await copyArtifact(file, temporary);
    if (this.kind.extension) return rename(temporary, this.servingPath);
    // A folder cannot be renamed over another: move the old one aside first (for the blink between, a worker
    // loading the encoder would retry; none is loading it then but for a restart).
    const old = `${this.servingPath}.old`;
    await rm(old, { recursive: true, force: true });
    await rename(this.servingPath, old).catch((error: NodeJS.ErrnoException) => { if (error.code !== "ENOENT") throw error; });
    await rename(temporary, this.servingPath);
    await rm(old, { recursive: true, force: true });
  }

  private async save(): Promise<void> {
    const path = join(this.dir, "registry.json");
    await writeAtomically(path, JSON.stringify(this.data, null, 1));
  }
}

async function readRegistry(path: string): Promise<RegistryFile> {
  try {
    const parsed = JSON.parse(await readFile(path, "utf8")) as Partial<RegistryFile>;
    return {
      versions: Array.isArray(parsed.versions) ? parsed.versions : [],
      ...(typeof parsed.bundle_sha256 === "string" ? { bundle_sha256: parsed.bundle_sha256 } : {}),
    };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return { versions: [] };
    throw new ModelError(`${path} is unreadable (${error instanceof Error ? error.message : String(error)})`);
  }
}

async function writeAtomically(path: string, text: string): Promise<void> {
  const temporary = `${path}.${process.pid}.tmp`;
  await writeFile(temporary, text);
  await rename(temporary, path);
}

/** sha256 of a file, or of a folder's files (names and contents, in name order). */
async function fingerprint(path: string): Promise<string> {
  const hash = createHash("sha256");
  if ((await stat(path)).isDirectory()) {
    for (const name of (await readdir(path, { recursive: true })).sort()) {
      const file = join(path, name);
      if (!(await stat(file)).isFile()) continue;
      hash.update(`${name}\0`).update(await readFile(file));
    }
  } else {
    hash.update(await readFile(path));
  }
  return hash.digest("hex");
}

async function copyArtifact(from: string, to: string): Promise<void> {
  if ((await stat(from)).isDirectory()) await cp(from, to, { recursive: true });
  else await copyFile(from, to);
}

/** The version an encoder folder records in its encoder.json. */
export async function encoderVersion(folder: string): Promise<string> {
  try {
    const version = (JSON.parse(await readFile(join(folder, "encoder.json"), "utf8")) as { version?: unknown }).version;
    if (typeof version === "string" && version) return version;
  } catch (error) {
    throw new ModelError(`${folder} is not an encoder folder: ${error instanceof Error ? error.message : String(error)}`);
  }
  throw new ModelError(`${folder}/encoder.json records no version`);
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
