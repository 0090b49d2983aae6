// Sums the pytest (JUnit XML) and vitest (JSON) results of `make test` into one closing line
// "N passed, N failed", which CI reads, and exits non-zero if anything failed or nothing ran. Above it, each
// runner's counts, then each skipped test with why (pytest's skip reason; for vitest the suite or test name,
// which test/helpers/requirements.ts makes say what is missing), then each failed test.
//
// Counting rules: skipped, xfail and todo tests are neither passed nor failed; errors (pytest setup/teardown and
// collection errors, vitest files that fail to load) count as failed; a runner that left no readable results
// file, or that exited non-zero while its results show no failure (a crash, an unhandled error), counts as one
// failed test, so a broken runner can never read as green.
//
// Usage: node scripts/test-summary.mjs --pytest-xml F --pytest-exit N --vitest-json F --vitest-exit N
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

// pytest: 0 all passed, 1 some failed, 5 no tests collected (not a crash: the count says 0). vitest exits 1 for
// failed tests and also for errors outside any test, so only its 0 is clean.
const pytestCleanExits = new Set([0, 1, 5]);

function readText(path) {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

function unescapeXml(text) {
  return text.replace(/&(lt|gt|quot|apos|amp);/g, (_, name) => ({ lt: "<", gt: ">", quot: '"', apos: "'", amp: "&" })[name]);
}

// pytest's JUnit XML escapes all text content, so a literal "<failure" can only be an element; a regex over
// <testcase> elements is exact here and saves an XML dependency. Each element is one outcome: pytest writes a
// second element for a teardown error, so, as in pytest's own "N failed, N errors", that error counts too.
function countPytest(path) {
  const xml = readText(path);
  if (xml === undefined || !/<testsuite[\s>]/.test(xml)) return { crashed: `no readable ${path}` };
  const counts = { passed: 0, failed: 0, skipped: 0, failedNames: [], skippedNames: [] };
  for (const match of xml.matchAll(/<testcase\b([^>]*?)(?:\/>|>([\s\S]*?)<\/testcase>)/g)) {
    const [, attributes, body = ""] = match;
    const classname = /classname="([^"]*)"/.exec(attributes)?.[1] ?? "";
    const name = /\bname="([^"]*)"/.exec(attributes)?.[1] ?? "?";
    const fullName = unescapeXml(classname ? `${classname}::${name}` : name);
    const skipped = /<skipped\b([^>]*)/.exec(body);
    if (/<(failure|error)\b/.test(body)) {
      counts.failed += 1;
      counts.failedNames.push(fullName);
    } else if (skipped) {
      counts.skipped += 1;
      // pytest writes type="pytest.skip" (skip, skipif) or type="pytest.xfail", each with the reason as message.
      const message = unescapeXml(/\bmessage="([^"]*)"/.exec(skipped[1])?.[1] ?? "") || "no reason given";
      const reason = /\btype="pytest\.xfail"/.test(skipped[1]) ? `expected to fail: ${message}` : message;
      counts.skippedNames.push(`${fullName} (${reason})`);
    } else {
      counts.passed += 1;
    }
  }
  return counts;
}

function countVitest(path) {
  const text = readText(path);
  let report;
  try {
    report = text === undefined ? undefined : JSON.parse(text);
  } catch {
    report = undefined;
  }
  if (!Array.isArray(report?.testResults)) return { crashed: `no readable ${path}` };
  const counts = { passed: 0, failed: 0, skipped: 0, failedNames: [], skippedNames: [] };
  for (const file of report.testResults) {
    let fileFailures = 0;
    for (const test of file.assertionResults ?? []) {
      if (test.status === "passed") counts.passed += 1;
      else if (test.status === "failed") {
        fileFailures += 1;
        counts.failedNames.push(`${file.name} > ${test.fullName}`);
      } else {
        counts.skipped += 1;
        // A suite or test skipped by describeRequiring or itRequiring carries its reason in its name.
        counts.skippedNames.push(`${file.name} > ${test.fullName}${test.status === "todo" ? " (todo)" : ""}`);
      }
    }
    // A file that fails to load (syntax error, missing import) has status "failed" and no failed test.
    if (file.status === "failed" && fileFailures === 0) {
      fileFailures = 1;
      counts.failedNames.push(`${file.name} (${String(file.message ?? "failed").split("\n")[0]})`);
    }
    counts.failed += fileFailures;
  }
  return counts;
}

function settle(runner, counts, exitCode, exitIsClean) {
  if (counts.crashed) {
    return { passed: 0, failed: 1, skipped: 0, failedNames: [`${runner} crashed (exit ${exitCode}): ${counts.crashed}`], skippedNames: [] };
  }
  if (!exitIsClean && counts.failed === 0) {
    const reason = `${runner} exited ${exitCode} with no failed test recorded (crash or error outside a test)`;
    return { ...counts, failed: 1, failedNames: [reason] };
  }
  return counts;
}

const { values } = parseArgs({
  options: {
    "pytest-xml": { type: "string" },
    "pytest-exit": { type: "string" },
    "vitest-json": { type: "string" },
    "vitest-exit": { type: "string" },
  },
});
for (const name of ["pytest-xml", "pytest-exit", "vitest-json", "vitest-exit"]) {
  if (values[name] === undefined) {
    console.error(`test-summary: missing --${name}`);
    process.exit(2);
  }
}
const pytestExit = Number(values["pytest-exit"]);
const vitestExit = Number(values["vitest-exit"]);

const runners = [
  ["pytest", settle("pytest", countPytest(values["pytest-xml"]), pytestExit, pytestCleanExits.has(pytestExit))],
  ["vitest", settle("vitest", countVitest(values["vitest-json"]), vitestExit, vitestExit === 0)],
];

let passed = 0;
let failed = 0;
console.log("");
for (const [runner, counts] of runners) {
  passed += counts.passed;
  failed += counts.failed;
  console.log(`${runner.padEnd(7)} ${counts.passed} passed, ${counts.failed} failed, ${counts.skipped} skipped`);
  for (const name of counts.skippedNames) console.log(`  SKIPPED ${name}`);
  for (const name of counts.failedNames) console.log(`  FAILED ${name}`);
}
if (passed + failed === 0) console.log("no test ran");
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);
