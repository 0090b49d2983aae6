# AutoLoRA bot: one entry point for a fresh clone. `make test` installs everything it needs (npm packages and a
# Python venv) and runs the host (vitest) and worker (pytest) suites; see README.md.

# Override on the command line (`make setup VENV=/tmp/v`, `make test PYTEST_PATHS=/tmp/t`); := rather than ?= so
# a stray environment variable cannot redirect CI.
VENV := .venv
PYTHON := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
WORKER := src/gpu/worker
PYTEST_PATHS := $(WORKER)/tests
RESULTS := build/test-results
# torch is pinned here, not in the worker's pyproject: a bare `torch` from PyPI is the multi-GB CUDA build.
# Our machines and CI carry the CPU build of 2.13.0 on disk (pip's find-links), which satisfies this pin and
# wins over PyPI's. GPU users install their CUDA build of torch 2.13.0 into $(VENV) first; pip then keeps it.
TORCH := torch==2.13.0

# onnxruntime-node's install script downloads GPU binaries from outside the npm registry, which our machines
# and CI cannot reach; the CPU binaries it ships in the npm package are all the host uses.
export ONNXRUNTIME_NODE_INSTALL := skip

NODE_STAMP := node_modules/.autolora-setup
VENV_STAMP := $(VENV)/.autolora-setup
HOST_STAMP := dist/.autolora-build
# The host's text encoder (ONNX + tokenizer), exported from the worker's; about 90 MB, so built, not committed.
TEXT_ENCODER := build/text-encoder/text-encoder.json

.DELETE_ON_ERROR:
.PHONY: setup test demo worker-demo bench world bench-world text-encoder clean distclean

# npm's install and pip's are independent, so they run side by side (their logs interleave); then the host build,
# beside the text-encoder export where the target needs it (test, demo). From a fresh clone on 2 cores to the
# demo's first grid (scripts/time-demo.sh, npm's and pip's caches warm): 314 s one step after another, 241 s so.
setup:
	@$(MAKE) --no-print-directory -j2 $(NODE_STAMP) $(VENV_STAMP)
	@$(MAKE) --no-print-directory -j2 $(HOST_STAMP) $(WITH_SETUP)

test demo: WITH_SETUP := $(TEXT_ENCODER)

# `npm ci` wipes node_modules, stamp included, so the stamp is written after it.
$(NODE_STAMP): package.json $(wildcard package-lock.json)
	if [ -f package-lock.json ]; then npm ci; else npm install; fi
	touch $@

# The compiled host that bin/autolora.js runs; rebuilt when any host source changes.
$(HOST_STAMP): $(NODE_STAMP) tsconfig.json tsconfig.build.json $(shell find src \( -name '*.ts' -o -name '*.mjs' \) -not -path '*/worker/*')
	npm run build
	touch $@

$(PYTHON):
	python3 -m venv $(VENV)

# Re-runs when the worker's dependencies change; torch goes first so nothing else can pull a CUDA build.
$(VENV_STAMP): $(WORKER)/pyproject.toml | $(PYTHON)
	$(PIP) install $(TORCH)
	$(PIP) install -e '$(WORKER)[test]'
	touch $@

# Both suites always run; the summary script prints the closing "N passed, N failed" line and decides the exit
# status, so pytest's exit 5 (no tests collected) or one suite's failure never hides the other's results.
test: setup $(TEXT_ENCODER)
	@mkdir -p $(RESULTS) && rm -f $(RESULTS)/pytest.xml $(RESULTS)/vitest.json
	@$(PYTHON) -m pytest $(PYTEST_PATHS) -q --junitxml=$(RESULTS)/pytest.xml; pytest_exit=$$?; \
	npx vitest run --reporter=default --reporter=json --outputFile=$(RESULTS)/vitest.json; vitest_exit=$$?; \
	node scripts/test-summary.mjs --pytest-xml $(RESULTS)/pytest.xml --pytest-exit $$pytest_exit \
		--vitest-json $(RESULTS)/vitest.json --vitest-exit $$vitest_exit

# The product on the embedded default: a local worker serving the proving-ground bundle, the bundle's LoRA pool
# ingested into data/ (first run only), and the web chat on http://127.0.0.1:8787 (Ctrl-C stops it).
demo: setup $(TEXT_ENCODER)
	node bin/autolora.js serve

# The worker alone: a LoRA written in a community file format, read back and fused with gates into a 2x2 grid of
# seeds next to the base model's grid (build/demo/grid-*.png).
worker-demo: setup
	$(PYTHON) -m autolora_worker demo --out build/demo

bench: setup
	$(PYTHON) -m autolora_worker bench fusion --json

# The proving ground from scratch: autoencoder, evaluator, base model, LoRA pool and strengths, previews, encoder, gates -> bundle/
# (about 100 minutes on 2 CPU cores; `--device cuda` is faster). Interrupted? `$(PYTHON) -m autolora_worker world build
# --resume` continues from build/world/.
world: setup
	$(PYTHON) -m autolora_worker world build --preset full

# The paper's tables on the committed bundle: reports/world/bench-world.{json,md} and fig4-heatmap.png, and the
# README's picture of it, docs/gallery.png.
bench-world: setup
	$(PYTHON) -m autolora_worker bench world --out reports/world --gallery docs/gallery.png

# The frozen text encoder as ONNX plus its tokenizer, for the host's retrieval (not committed: about 90 MB).
text-encoder: $(TEXT_ENCODER)

# text-encoder.json is written last, so its presence means a complete, checked export (about 20 s; a few seconds
# when ~/.cache/autolora holds an intact export of the same sources, see AUTOLORA_CACHE_DIR in the README).
$(TEXT_ENCODER): $(VENV_STAMP) $(WORKER)/autolora_worker/world/onnx_export.py
	$(PYTHON) -m autolora_worker export-text-encoder --out $(dir $@)

# Build outputs and setup stamps; the next `make setup` re-checks the installs (quick when nothing changed).
clean:
	rm -rf build dist .pytest_cache $(WORKER)/.pytest_cache $(WORKER)/*.egg-info $(NODE_STAMP) $(VENV_STAMP)
	find src test scripts -name __pycache__ -type d -prune -exec rm -rf {} +

# Also the installed packages: node_modules and the venv (including a CUDA torch installed by hand).
distclean: clean
	rm -rf node_modules $(VENV)
