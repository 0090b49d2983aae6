"""The proving-ground pipeline: the pool plan, a reduced build through every stage, and the world benchmark on
the committed bundle."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from autolora_worker.__main__ import main
from autolora_worker.lora.formats import FORMATS, read_lora_file
from autolora_worker.world.build import build_world
from autolora_worker.world.bundle import BundlePaths, default_bundle_dir
from autolora_worker.world.pool import OBJECT_CONCEPTS, STYLE_CONCEPTS, plan_pool

SUMMARY_KEYS = {
    "retrieval": {"encoder", "captions", "random"},
    "table2": {"none", "direct", "dare", "klora", "gated"},
    "table34": {"k2", "k3"},
    "table5": {"with_global", "without_global"},
    "table1": {"base", "top1", "top2", "top3"},
    "fig4": {"gap"},
    "evaluator": {"shape_acc", "style_acc", "color_acc"},
}


def test_pool_plan_has_the_issue_s_shape():
    plan = plan_pool(seed=0)
    assert len(plan.loras) >= 160
    assert len({lora.id for lora in plan.loras}) == len(plan.loras)
    assert len(plan.split("heldout")) >= 0.2 * len(plan.loras)
    assert {lora.format for lora in plan.loras} == set(FORMATS)
    # Fused layouts store separate q/k/v factors block-diagonally: only rank-2 LoRAs use them (the bundle's size cap).
    assert {lora.rank for lora in plan.loras if lora.format in ("comfyui", "bfl", "xlabs")} == {2}
    assert {lora.subset for lora in plan.loras} == {"all", "attention", "double"}
    assert min(lora.rank for lora in plan.loras) == 2 and max(lora.rank for lora in plan.loras) == 32
    assert {lora.kind for lora in plan.loras} == {"object", "style", "weak", "off-concept"}
    # every concept is both trained on and held out, so zero-shot retrieval has something to find
    for concept in OBJECT_CONCEPTS + STYLE_CONCEPTS:
        splits = Counter(lora.split for lora in plan.loras if lora.concept == concept and lora.kind in ("object", "style"))
        assert splits["train"] >= 1 and splits["heldout"] >= 1, concept
    assert plan_pool(seed=0) == plan  # a pure function of the seed
    assert plan_pool(seed=1) != plan


@pytest.fixture(scope="module")
def ci_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    lines: list[str] = []
    out = build_world("ci", out=root / "bundle", work=root / "work", progress=lines.append)
    return out, lines


def test_reduced_build_runs_every_stage_and_writes_a_manifest(ci_bundle):
    out, lines = ci_bundle
    for stage in ("evaluator", "base", "pool", "previews", "encoder", "gates"):
        assert any(f"[world] {stage}: done" in line for line in lines), stage
    paths = BundlePaths(out)
    manifest = json.loads(paths.manifest.read_text())
    assert set(manifest["versions"]) == {"model", "encoder", "gates"} and all(manifest["versions"].values())
    records = json.loads(paths.pool_index.read_text())["loras"]
    for record in records:
        assert record["file"] in manifest["files"]
        lora = read_lora_file(out / record["file"])  # every pool file reads back through the community-format path
        assert lora.format == ("diffusers" if record["format"] == "diffusers" else lora.format)
        assert 1 <= len(record["previews"]) <= 5
        assert all((out / preview["file"]).exists() and preview["caption"] for preview in record["previews"])
    assert not (out.parent / "work" / "bundle").exists(), "the staged bundle is moved, not copied"


def test_held_out_loras_never_reach_encoder_or_gate_training(ci_bundle):
    out, _ = ci_bundle
    manifest = json.loads(BundlePaths(out).manifest.read_text())
    records = json.loads(BundlePaths(out).pool_index.read_text())["loras"]
    held_out = {r["id"] for r in records if r["split"] == "heldout"}
    assert held_out
    assert manifest["facts"]["encoder_train_ids"] and not held_out & set(manifest["facts"]["encoder_train_ids"])
    assert manifest["facts"]["gate_train_ids"] and not held_out & set(manifest["facts"]["gate_train_ids"])


class Interrupt(Exception):
    pass


def test_an_interrupted_build_resumes_to_the_same_bundle(ci_bundle, tmp_path):
    out, _ = ci_bundle

    def stop_at_previews(line: str) -> None:
        if line == "[world] previews: building":
            raise Interrupt  # as if the machine went down mid-build

    with pytest.raises(Interrupt):
        build_world("ci", out=tmp_path / "bundle", work=tmp_path / "work", progress=stop_at_previews)
    assert not (tmp_path / "bundle").exists(), "nothing is published before the build finishes"
    lines: list[str] = []
    resumed = build_world("ci", out=tmp_path / "bundle", work=tmp_path / "work", resume=True, progress=lines.append)
    for stage in ("evaluator", "base", "pool"):
        assert any(line.startswith(f"[world] {stage}: already built") for line in lines), stage
    # Same tensors as the uninterrupted build (file bytes may differ: safetensors orders header metadata freely).
    files = sorted(path.relative_to(out) for path in (out / "pool").glob("*.safetensors"))
    assert files == sorted(path.relative_to(resumed) for path in (resumed / "pool").glob("*.safetensors"))
    for name in files:
        first, second = read_lora_file(out / name), read_lora_file(resumed / name)
        assert first.layers.keys() == second.layers.keys()
        for module, layer in first.layers.items():
            assert torch.equal(layer.down, second.layers[module].down), (name, module)
            assert torch.equal(layer.up, second.layers[module].up), (name, module)


def test_world_bench_fast_runs_every_table(ci_bundle, tmp_path, capsys):
    # On the committed bundle when there is one (issue [2/5] ships it), else on the reduced build above.
    bundle = default_bundle_dir() if BundlePaths(default_bundle_dir()).manifest.exists() else ci_bundle[0]
    assert main(["bench", "world", "--fast", "--json", "--bundle", str(bundle), "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    summary = report["summary"]
    for section, keys in SUMMARY_KEYS.items():
        assert keys <= set(summary[section]), section
    for metrics in summary["retrieval"].values():
        assert 0.0 <= metrics["recall_at_1"] <= metrics["recall_at_3"] <= 1.0
    assert (tmp_path / "bench-world.md").exists() and (tmp_path / "fig4-heatmap.png").exists()


def test_world_bench_refuses_a_folder_that_is_not_a_bundle(tmp_path, capsys):
    assert main(["bench", "world", "--fast", "--bundle", str(tmp_path)]) == 2
    assert "not a proving-ground bundle" in capsys.readouterr().err


def test_demo_on_a_bundle_retrieves_and_fuses(ci_bundle, tmp_path, capsys):
    out, _ = ci_bundle
    assert main(["demo", "--bundle", str(out), "--out", str(tmp_path), "--top", "2", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("retrieved ") == 2 and "the evaluator sees" in printed
    assert (tmp_path / "grid-none.png").exists() and (tmp_path / "grid-gated.png").exists()
