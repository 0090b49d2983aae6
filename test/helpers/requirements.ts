// What some tests need beyond `npm ci` (the Python worker's venv, the committed proving-ground bundle), and
// describeRequiring / itRequiring, which run a suite or test where its needs are met and otherwise skip it under a
// name that says what is missing and how to get it. A skip is then never silent: the name reaches every reporter
// and the closing summary of `make test` (scripts/test-summary.mjs lists each skipped test by its full name).
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "vitest";

export interface Requirement {
  met: boolean;
  /** What is missing and how to get it, e.g. "needs .venv with the Python worker; run make setup". */
  unmet: string;
}

const root = join(import.meta.dirname, "..", "..");

export const pythonWorker: Requirement = {
  met: existsSync(join(root, ".venv", "bin", "python")),
  unmet: "needs .venv with the Python worker; run make setup",
};

/** A file of the proving-ground bundle committed under bundle/, e.g. "gates/gates.safetensors". */
export function bundleFile(path: string): Requirement {
  return {
    met: existsSync(join(root, "bundle", path)),
    unmet: `needs bundle/${path} of the committed bundle; restore it with git checkout -- bundle`,
  };
}

/** `name` and skip: false where every requirement is met; otherwise skip: true and the name with the unmet needs:
 *  "autolora serve (skipped: needs .venv with the Python worker; run make setup)". */
export function nameWithRequirements(name: string, requirements: Requirement[]): { name: string; skip: boolean } {
  const unmet = requirements.filter((requirement) => !requirement.met).map((requirement) => requirement.unmet);
  return unmet.length === 0 ? { name, skip: false } : { name: `${name} (skipped: ${unmet.join("; ")})`, skip: true };
}

/** `describe` where every requirement is met; otherwise `describe.skip`, named by nameWithRequirements. */
export function describeRequiring(...requirements: Requirement[]): (name: string, factory: () => void) => void {
  return (name, factory) => {
    const named = nameWithRequirements(name, requirements);
    (named.skip ? describe.skip : describe)(named.name, factory);
  };
}

/** `it` where every requirement is met; otherwise `it.skip`, named by nameWithRequirements. */
export function itRequiring(...requirements: Requirement[]): (name: string, body: () => unknown, timeout?: number) => void {
  return (name, body, timeout) => {
    const named = nameWithRequirements(name, requirements);
    (named.skip ? it.skip : it)(named.name, body, timeout);
  };
}

export const redisServer: Requirement = {
  met: ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].some(existsSync),
  unmet: "needs redis-server (Debian: apt-get install redis-server; .ci/run installs it)",
};
