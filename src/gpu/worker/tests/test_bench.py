"""The benchmark and demo commands: every model, strategy and k row of `bench fusion`, and the demo grids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from autolora_worker.__main__ import main
from autolora_worker.bench import full_flux_rows
from autolora_worker.fusion import STRATEGIES


def test_bench_fusion_json_has_every_row():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "autolora_worker", "bench", "fusion", "--json", "--tokens", "32",
                             "--repeats", "1"], cwd=Path(__file__).resolve().parents[1], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["device"].startswith("cpu")
    rows = report["rows"]
    models = ["proving-ground", "flux-linear-3072x3072", "flux-linear-3072x12288"]
    assert {(r["model"], r["strategy"], r["k"]) for r in rows} == {
        (m, s, k) for m in models for s in STRATEGIES for k in (1, 2, 3)}
    for row in rows:
        assert set(row) == {"model", "strategy", "k", "ms", "ratio_vs_none"}
        assert row["ms"] > 0
        if row["strategy"] == "none":
            assert row["ratio_vs_none"] == 1.0


def test_full_flux_path_runs_on_a_shrunken_config():
    tiny = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                axes_dims_rope=(4, 6, 6))
    rows = full_flux_rows(torch.device("cpu"), rank=4, repeats=1, config=tiny, size=64, text_tokens=8)
    assert len(rows) == len(STRATEGIES) * 3 and {r["model"] for r in rows} == {"flux-full"}
    assert torch.get_default_dtype() == torch.float32  # the bf16 build must not leak into the process


def test_demo_writes_both_grids(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 0
    none, gated = (Image.open(tmp_path / f"grid-{fusion}.png") for fusion in ("none", "gated"))
    assert none.size == gated.size == (512, 512)
    assert list(none.getdata()) != list(gated.getdata()), "the LoRA should change the images"
