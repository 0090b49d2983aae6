#!/usr/bin/env bash
# The worker's GPU check (scripts/gpu_check.py): fusion step times on the full-size FLUX.1 transformer and a 4-step
# generation through the worker's HTTP API with imported gates; `--tiny` runs it all on the CPU on the tiny stand-in.
# One JSON object per line on stdout, a summary line last; exit status 1 when a step failed, 2 when it cannot start.
#
# Python: $PYTHON, else the repository's .venv, else python3 (the device machine's, which holds PyTorch).
#
# The device machine has PyTorch, transformers, peft, safetensors, huggingface-hub, numpy and pillow, but neither
# diffusers nor pydantic, and no package registry: they travel as wheels in wheels/gpu-check/ (git ignores the
# wheels; name the folder in the device tool's `carry`). Fill it here, once, from the repository root, for the
# device's Python 3.12 on x86-64 at the versions the venv runs (diffusers needs importlib-metadata, which needs
# lazy-importer and zipp; pydantic needs its core, annotated-types, typing-inspection and typing-extensions; about
# 9 MB in all):
#
#   version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
#   python3 -m pip download --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d wheels/gpu-check $(for name in diffusers importlib-metadata lazy-importer zipp pydantic pydantic-core \
#       annotated-types typing-inspection typing-extensions; do echo "$name==$(version $name)"; done)
#
# pip installs only what the machine lacks from that folder: a carried dependency the machine already has in a
# version that fits (typing-extensions, zipp) is left as it is.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python=$root/.venv/bin/python; else python=python3; fi
fi

# Looked up, not imported: importing diffusers takes seconds, and the check imports it anyway.
missing="import importlib.util, sys; sys.exit(any(importlib.util.find_spec(n) is None for n in sys.argv[1:]))"
if ! "$python" -c "$missing" diffusers pydantic; then
  wheels=$root/wheels/gpu-check
  # pip's own output goes to stderr: stdout carries only the check's JSON lines.
  if ! "$python" -m pip install --quiet --no-index --find-links "$wheels" diffusers pydantic >&2; then
    echo "{\"step\": \"install\", \"ok\": false, \"error\": \"diffusers or pydantic is missing and pip could" \
      "not install them from $wheels (see the header of scripts/gpu-check.sh)\"}"
    echo '{"step": "summary", "ok": false, "failed": ["install"]}'
    exit 1
  fi
fi

export PYTHONPATH="$root/src/gpu/worker${PYTHONPATH:+:$PYTHONPATH}"
# Everything is local (the device machine reaches nothing): never let a library wait on the Hugging Face Hub.
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec "$python" "$root/scripts/gpu_check.py" "$@"
