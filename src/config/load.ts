// Loading the host's configuration: config/default.yaml, then the file named by AUTOLORA_CONFIG, then AUTOLORA_*
// environment variables; validated once at start, with every problem reported by key and by where it came from.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parse, YAMLParseError } from "yaml";
import { configSchema, type Config } from "./schema.js";
import { SECRET_VARIABLES, Secrets } from "./secrets.js";

export const DEFAULT_CONFIG_FILE = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "config", "default.yaml");
const PREFIX = "AUTOLORA_";
// AUTOLORA_ variables that are not settings: the override file itself, and ones the worker reads (the bundle, and
// where the text-encoder export is cached).
const NOT_SETTINGS = new Set(["AUTOLORA_CONFIG", "AUTOLORA_BUNDLE", "AUTOLORA_CACHE_DIR", ...Object.values(SECRET_VARIABLES)]);

export class ConfigError extends Error {
  override readonly name = "ConfigError";
  readonly code = "invalid-config";
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n${problems.map((problem) => `  - ${problem}`).join("\n")}`);
  }
}

export interface LoadedConfig {
  config: Config;
  secrets: Secrets;
}

type Tree = Record<string, unknown>;

/** Load and validate; throws ConfigError listing every problem. `env` defaults to process.env. */
export function loadConfig(
  env: Record<string, string | undefined> = process.env,
  defaultFile = DEFAULT_CONFIG_FILE,
): LoadedConfig {
  const problems: string[] = [];
  const sources = new Map<string, string>();
  const defaults = readYaml(defaultFile, problems);
  let merged = defaults;
  const overrideFile = env.AUTOLORA_CONFIG?.trim();
  if (overrideFile) {
    const overrides = readYaml(overrideFile, problems);
    problems.push(...secretsInFile(overrides, overrideFile));
    merged = mergeTree(merged, overrides, overrideFile, sources, []);
  }
  for (const [variable, raw] of Object.entries(env).sort()) {
    if (!variable.startsWith(PREFIX) || NOT_SETTINGS.has(variable) || raw === undefined) continue;
    const path = variable.slice(PREFIX.length).toLowerCase().split("__");
    const known = lookup(defaults, path);
    if (known === undefined) {
      problems.push(`${variable}: no setting ${path.join(".")}${hintFor(defaults, path)}`);
      continue;
    }
    merged = setPath(merged, path, typeof known.value === "string" ? raw : parseValue(raw));
    sources.set(path.join("."), variable);
  }
  if (problems.length === 0) {
    const result = configSchema.safeParse(merged);
    if (result.success) return { config: result.data, secrets: new Secrets(env) };
    for (const issue of result.error.issues) {
      const key = issue.path.join(".") || "(top level)";
      const unknown = issue.code === "unrecognized_keys" ? `: unknown key(s) ${issue.keys.join(", ")}` : `: ${issue.message}`;
      const source = sourceOf(key, sources) ?? (issue.code === "unrecognized_keys" ? overrideFile : undefined);
      problems.push(`${key}${unknown}${source ? ` (from ${source})` : ""}`);
    }
  }
  throw new ConfigError(problems);
}

function readYaml(file: string, problems: string[]): Tree {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    problems.push(`${file}: cannot read the config file (${(error as NodeJS.ErrnoException).code ?? "error"})`);
    return {};
  }
  try {
    const value: unknown = parse(text) ?? {};
    if (typeof value === "object" && !Array.isArray(value)) return value as Tree;
    problems.push(`${file}: the config file must be a mapping of keys to values`);
  } catch (error) {
    const where = error instanceof YAMLParseError && error.linePos ? ` at line ${error.linePos[0].line}` : "";
    problems.push(`${file}: not valid YAML${where}`);
  }
  return {};
}

/** A file that tries to hold a secret gets told where secrets go instead. */
function secretsInFile(tree: Tree, file: string, prefix: string[] = []): string[] {
  return Object.entries(tree).flatMap(([key, value]) => {
    const path = [...prefix, key];
    if (/token|secret|api_?key|password/i.test(key)) {
      return [`${file}: ${path.join(".")} looks like a secret; secrets are read only from the environment ` +
        `(${Object.values(SECRET_VARIABLES).join(", ")})`];
    }
    return isTree(value) ? secretsInFile(value, file, path) : [];
  });
}

function mergeTree(base: Tree, over: Tree, source: string, sources: Map<string, string>, prefix: string[]): Tree {
  const result: Tree = { ...base };
  for (const [key, value] of Object.entries(over)) {
    const path = [...prefix, key];
    const current = result[key];
    result[key] = isTree(current) && isTree(value) ? mergeTree(current, value, source, sources, path) : value;
    if (!isTree(value)) sources.set(path.join("."), source);
  }
  return result;
}

function setPath(tree: Tree, path: string[], value: unknown): Tree {
  const [head, ...rest] = path as [string, ...string[]];
  const child = tree[head];
  return { ...tree, [head]: rest.length === 0 ? value : setPath(isTree(child) ? child : {}, rest, value) };
}

function lookup(tree: Tree, path: string[]): { value: unknown } | undefined {
  let node: unknown = tree;
  for (const key of path) {
    if (!isTree(node) || !(key in node)) return undefined;
    node = node[key];
  }
  return { value: node };
}

function hintFor(defaults: Tree, path: string[]): string {
  const parent = lookup(defaults, path.slice(0, -1));
  const keys = parent && isTree(parent.value) ? Object.keys(parent.value) : [];
  const where = path.length > 1 ? path.slice(0, -1).join(".") : "the top level";
  return keys.length ? ` (${where} has: ${keys.join(", ")})` : "";
}

/** Environment values are YAML scalars or flow collections ("9000", "true", '["web:alice"]'). */
function parseValue(raw: string): unknown {
  try {
    return parse(raw);
  } catch {
    return raw;
  }
}

function sourceOf(key: string, sources: Map<string, string>): string | undefined {
  for (let path = key; path; path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "") {
    const source = sources.get(path);
    if (source) return source;
  }
  return undefined;
}

function isTree(value: unknown): value is Tree {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
