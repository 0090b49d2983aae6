// The closing summary of `make test` (scripts/test-summary.mjs) on results files shaped as pytest and vitest write
// them: each skipped test listed with why it was skipped, and the last line "N passed, N failed" that CI reads.
import { execFile } from "node:child_process";
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";

const script = join(import.meta.dirname, "..", "scripts", "test-summary.mjs");

interface VitestResult {
  status: string;
  fullName: string;
}

async function summarize(pytestCases: string, vitestResults: VitestResult[]): Promise<{ lines: string[]; exitCode: number }> {
  const folder = await mkdtemp(join(tmpdir(), "autolora-test-summary-"));
  const xml = `<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite name="pytest">${pytestCases}</testsuite></testsuites>`;
  await writeFile(join(folder, "pytest.xml"), xml);
  const report = { testResults: [{ name: "/repo/test/serve.test.ts", status: "passed", assertionResults: vitestResults }] };
  await writeFile(join(folder, "vitest.json"), JSON.stringify(report));
  const argv = [script, "--pytest-xml", join(folder, "pytest.xml"), "--pytest-exit", "0", "--vitest-json", join(folder, "vitest.json"), "--vitest-exit", "0"];
  try {
    const { stdout } = await promisify(execFile)(process.execPath, argv);
    return { lines: stdout.trim().split("\n"), exitCode: 0 };
  } catch (error) {
    const failed = error as { stdout: string; code: number };
    return { lines: failed.stdout.trim().split("\n"), exitCode: failed.code };
  }
}

describe("the test summary", () => {
  it("lists each skipped test with its reason: pytest's skip message, vitest's suite name", async () => {
    const { lines, exitCode } = await summarize(
      '<testcase classname="tests.test_retrain" name="test_ok" time="0.1" />' +
      '<testcase classname="tests.test_retrain" name="test_needs_bundle" time="0.0"><skipped type="pytest.skip" message="needs the &lt;bundle&gt;">tests/test_retrain.py:15: needs the &lt;bundle&gt;</skipped></testcase>' +
      '<testcase classname="tests.test_fusion" name="test_known" time="0.0"><skipped type="pytest.xfail" message="known drift" /></testcase>',
      [
        { status: "passed", fullName: "web chat answers" },
        { status: "skipped", fullName: "autolora serve (skipped: needs .venv with the Python worker; run make setup) serves /imagine" },
        { status: "todo", fullName: "web chat someday" },
      ],
    );
    expect(lines).toEqual([
      "pytest  1 passed, 0 failed, 2 skipped",
      "  SKIPPED tests.test_retrain::test_needs_bundle (needs the <bundle>)",
      "  SKIPPED tests.test_fusion::test_known (expected to fail: known drift)",
      "vitest  1 passed, 0 failed, 2 skipped",
      "  SKIPPED /repo/test/serve.test.ts > autolora serve (skipped: needs .venv with the Python worker; run make setup) serves /imagine",
      "  SKIPPED /repo/test/serve.test.ts > web chat someday (todo)",
      "2 passed, 0 failed",
    ]);
    expect(exitCode).toBe(0);
  });

  it("prints no skip list when nothing was skipped, and still ends with the passed and failed counts", async () => {
    const { lines, exitCode } = await summarize(
      '<testcase classname="tests.test_a" name="test_ok" time="0.1" />' +
      '<testcase classname="tests.test_a" name="test_bad" time="0.1"><failure message="assert 1 == 2">boom</failure></testcase>',
      [{ status: "passed", fullName: "web chat answers" }],
    );
    expect(lines).toEqual([
      "pytest  1 passed, 1 failed, 0 skipped",
      "  FAILED tests.test_a::test_bad",
      "vitest  1 passed, 0 failed, 0 skipped",
      "2 passed, 1 failed",
    ]);
    expect(exitCode).toBe(1);
  });
});
