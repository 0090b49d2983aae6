// describeRequiring and itRequiring (test/helpers/requirements.ts): a suite or test whose needs are not met is
// skipped under a name that says what is missing and how to get it; one whose needs are met runs under its own name.
import { describe, expect, it } from "vitest";
import { describeRequiring, itRequiring, nameWithRequirements } from "./helpers/requirements.js";

const missing = { met: false, unmet: "needs a thing; run make thing" };
const alsoMissing = { met: false, unmet: "needs another; run make another" };
const present = { met: true, unmet: "never shown" };

// Empty, so that this file reports no skipped test of its own; the skipped suite is read from the task tree below.
describeRequiring(present, missing)("a suite needing a thing", () => undefined);

let ranTest = false;
describeRequiring(present)("a suite with all it needs", () => {
  itRequiring(present)("a test with all it needs", () => {
    ranTest = true;
  });
});

describe("describeRequiring and itRequiring", () => {
  it("skip a suite with unmet needs under a name that says which, and run one with all it needs", ({ task }) => {
    const suites = task.file.tasks.map((suite) => ({ name: suite.name, mode: suite.mode }));
    expect(suites).toContainEqual({ name: "a suite needing a thing (skipped: needs a thing; run make thing)", mode: "skip" });
    expect(suites).toContainEqual({ name: "a suite with all it needs", mode: "run" });
    expect(ranTest).toBe(true);
  });

  it("name every unmet need, and nothing when all are met", () => {
    expect(nameWithRequirements("autolora crawl", [missing, present, alsoMissing])).toEqual({
      name: "autolora crawl (skipped: needs a thing; run make thing; needs another; run make another)",
      skip: true,
    });
    expect(nameWithRequirements("autolora crawl", [present])).toEqual({ name: "autolora crawl", skip: false });
  });
});
