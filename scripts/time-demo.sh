#!/usr/bin/env bash
# How long `make demo` takes on a fresh clone, to the first grid a user sees: clone this repository into a temporary
# folder, run the demo's own set-up there (npm and pip installs, the text-encoder export), start the host as
# `make demo` does (the first run adds the bundle's LoRAs to the pool), then ask the web chat for one /imagine and
# wait for its grid. Prints one line per phase and a JSON summary; the clone is removed afterwards.
#
#   scripts/time-demo.sh [--keep] [--port 8799]
#
# It needs what `make demo` needs (network access to the npm registry and PyPI, Python 3.11, Node 20); chromium is
# not used. Packages come from the machine's npm and pip caches when they hold them, as on a machine that has
# installed anything before; `npm cache clean --force` and `pip cache purge` beforehand give the first-ever time.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
keep=0
port=8799
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) keep=1 ;;
    --port) port=$2; shift ;;
    *) echo "usage: scripts/time-demo.sh [--keep] [--port N]" >&2; exit 2 ;;
  esac
  shift
done

work=$(mktemp -d /tmp/autolora-demo.XXXXXX)
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  if [ "$keep" = 0 ]; then rm -rf "$work"; else echo "kept $work" >&2; fi
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

start=$(now)
git clone --quiet "$repo" "$work/clone"
cd "$work/clone"
clone_s=$(since "$start")
echo "[time-demo] cloned in ${clone_s} s" >&2

# What `make demo` makes first: the installs, then the host build beside the text-encoder export.
phase=$(now)
make setup WITH_SETUP=build/text-encoder/text-encoder.json >"$work/setup.log" 2>&1 || { tail -30 "$work/setup.log" >&2; exit 1; }
setup_s=$(since "$phase")
echo "[time-demo] make setup and the text-encoder export (npm ci beside the venv, then the host build beside the export) in ${setup_s} s" >&2

# What `make demo` runs once its prerequisites are made; the port is moved off the default so a running demo
# elsewhere on this machine is not in the way.
phase=$(now)
AUTOLORA_WEB__PORT=$port node bin/autolora.js serve >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 600); do
  if grep -q "\[web\] chat on" "$work/serve.log"; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then tail -30 "$work/serve.log" >&2; exit 1; fi
  sleep 0.5
done
grep -q "\[web\] chat on" "$work/serve.log" || { echo "the web chat never came up" >&2; tail -30 "$work/serve.log" >&2; exit 1; }
serve_s=$(since "$phase")
echo "[time-demo] serve: first-run pool ingest and web chat up in ${serve_s} s" >&2

phase=$(now)
node --input-type=module - "$port" <<'EOF' >&2
// One chat session: open the page (cookie), follow the events, send /imagine, wait for the message with the grid.
const port = process.argv[2];
const base = `http://127.0.0.1:${port}`;
const page = await fetch(`${base}/`);
const cookie = page.headers.get("set-cookie").split(";")[0];
const events = await fetch(`${base}/api/events`, { headers: { cookie } });
const reader = events.body.getReader();
const sent = await fetch(`${base}/api/command`, {
  method: "POST", headers: { cookie, origin: base, "content-type": "application/json" },
  body: JSON.stringify({ text: "/imagine a red hexagon with stripes" }),
});
if (sent.status !== 202) throw new Error(`the chat refused the command: ${sent.status} ${await sent.text()}`);
const deadline = Date.now() + 600_000;
let buffer = "";
for (;;) {
  if (Date.now() > deadline) throw new Error("no grid within 10 minutes");
  const { value, done } = await reader.read();
  if (done) throw new Error("the event stream ended before the grid came");
  buffer += new TextDecoder().decode(value);
  const grid = buffer.split("\n\n").map((block) => block.split("\n").find((line) => line.startsWith("data: ")))
    .filter(Boolean).map((line) => JSON.parse(line.slice(6)))
    .find((message) => message.image && message.buttons && message.buttons.length);
  if (grid) {
    console.log(`[time-demo] grid: ${grid.image}`);
    process.exit(0);
  }
}
EOF
grid_s=$(since "$phase")
echo "[time-demo] first /imagine answered with its grid in ${grid_s} s" >&2
total_s=$(since "$start")
ingest_line=$(grep -o "\[pool\] [0-9]*/[0-9]* added" "$work/serve.log" | tail -1 || true)
printf '{"clone_s": %s, "setup_and_export_s": %s, "serve_until_chat_s": %s, "first_grid_s": %s, "total_s": %s, "ingest": "%s", "cores": %s}\n' \
  "$clone_s" "$setup_s" "$serve_s" "$grid_s" "$total_s" "$ingest_line" "$(nproc)"
