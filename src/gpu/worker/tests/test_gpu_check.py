"""scripts/gpu-check.sh --tiny: the GPU check rehearsed on the CPU on the tiny stand-in, end to end as a subprocess —
fusion rows, `gates import` of the published layout, and a 4-step gated generation through the worker's HTTP API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[4] / "scripts" / "gpu-check.sh"
# A generous limit on a hung run only; the rehearsal takes 20-35 s on 2 cores (its time is not what this tests).
TIMEOUT_S = 300


@pytest.mark.slow
def test_the_tiny_gpu_check_passes_every_step():
    # This interpreter, which has the worker's dependencies: the script then installs nothing.
    result = subprocess.run([str(SCRIPT), "--tiny"], env={**os.environ, "PYTHON": sys.executable},
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]  # every line is one JSON object

    rows = {(line["row"], line["k"]): line for line in lines if line["step"] == "fusion" and "k" in line}
    for strategy in ("none", "direct", "gated"):
        for k in (1, 2, 3):
            row = rows[strategy, k]
            assert row["model"] == "tiny-flux" and row["ms"] > 0, row
    assert all(rows["none", k]["ratio_vs_none"] == 1.0 for k in (1, 2, 3))
    assert rows["gated", 1]["gate"] == "eager"
    assert all(rows["gated-compiled", k]["gate"] == "compiled" and rows["gated-compiled", k]["ms"] > 0 for k in (1, 2, 3))

    imported = next(line for line in lines if line["step"] == "gates-import")
    assert imported["ok"] and imported["gates_converted"] == 304

    generated = next(line for line in lines if line["step"] == "generate")
    assert generated["ok"], generated
    assert generated["steps"] == generated["progress_events"] == 4
    assert generated["images"] == 1 and generated["image_sizes"] == [[256, 256]]
    assert generated["fused_with_gates"] and generated["loras"] == 2
    assert "GateBank.save" in generated["gates"]

    assert lines[-1]["step"] == "summary" and lines[-1]["ok"] and lines[-1]["failed"] == []
