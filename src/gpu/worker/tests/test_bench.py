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
from autolora_worker.bench import COMPILED_ROW, FLOOR_ROW
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
        (m, s, k) for m in models for s in (*STRATEGIES, COMPILED_ROW, FLOOR_ROW) for k in (1, 2, 3)}
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
    assert len(rows) == (len(STRATEGIES) + 2) * 3 and {r["model"] for r in rows} == {"flux-full"}
    assert torch.get_default_dtype() == torch.float32  # the bf16 build must not leak into the process


def test_demo_writes_both_grids(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 0
    none, gated = (Image.open(tmp_path / f"grid-{fusion}.png") for fusion in ("none", "gated"))
    assert none.size == gated.size == (512, 512)
    assert list(none.getdata()) != list(gated.getdata()), "the LoRA should change the images"


def test_world_prompts_name_the_split_concepts_in_held_out_phrasings(capsys):
    """The host's retrieval bench reads its prompts from `world prompts`: the same set for a seed, in phrasings the
    training captions never use, one per object + style pair, and every LoRA of the split listed."""
    from autolora_worker.world.render import SHAPES, STYLES, prompt_for

    bundle = Path(__file__).resolve().parents[4] / "bundle"
    assert main(["world", "prompts", "--split", "heldout", "--seed", "5", "--per-concept", "2", "--bundle", str(bundle)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["world", "prompts", "--split", "heldout", "--seed", "5", "--per-concept", "2", "--bundle", str(bundle)]) == 0
    assert json.loads(capsys.readouterr().out) == first
    records = json.loads((bundle / "pool" / "pool.json").read_text())["loras"]
    held = [r for r in records if r["split"] == "heldout"]
    assert [lora["id"] for lora in first["loras"]] == [r["id"] for r in held]
    objects = {r["truth"]["shape"] for r in held if r["kind"] == "object"}
    styles = {r["truth"]["style"] for r in held if r["kind"] == "style"}
    assert len(first["singles"]) == 2 * (len(objects) + len(styles))
    assert len(first["pairs"]) == len(objects) * len(styles)
    assert all(p["concepts"][0] in SHAPES and p["concepts"][1] in STYLES for p in first["pairs"])
    training_phrasings = {prompt_for(shape=s) for s in SHAPES}  # the first training template, for contrast
    assert not training_phrasings & {p["prompt"] for p in first["singles"]}
    assert main(["world", "prompts", "--split", "heldout", "--seed", "5", "--bundle", str(bundle / "nowhere")]) == 2
