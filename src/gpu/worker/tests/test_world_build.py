"""The proving-ground pipeline: the pool plan, a reduced build through every stage, and the world benchmark on
the committed bundle."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from autolora_worker.__main__ import main
from autolora_worker.lora.formats import FORMATS, read_lora_file
from autolora_worker.world.build import PRESETS, build_world, bundle_readme, mixture, scene_sampler
from autolora_worker.world.bundle import BundlePaths, default_bundle_dir
from autolora_worker.world.gates import GATE_NAMES, GATE_SEEDS, WorldGateError, check
from autolora_worker.world.pool import OBJECT_CONCEPTS, STYLE_CONCEPTS, plan_pool
from autolora_worker.world.render import BASE_SHAPES, SHAPE_WORDS, SHAPES, STYLE_POST, STYLE_PRE, STYLES

SUMMARY_KEYS = {
    "retrieval": {"encoder", "captions", "random"},
    "table2": {"none", "direct", "dare", "klora", "gated"},
    "table34": {"k2", "k3"},
    "table5": {"with_global", "without_global"},
    "table2_gated_minus_direct": {"both_correct", "both_correct_ci"},
    "fig4": {"gap"},
    "evaluator": {"shape_acc", "style_acc", "color_acc"},
    "gates": {"evaluator", "base_own", "single_lora_train", "single_lora_heldout", "none_lacks"},
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
    # The full build's smaller pool (the committed bundle's) still holds every community format.
    full = PRESETS["full"]
    built = plan_pool(seed=full.seed, variants_per_concept=full.variants_per_concept, odd_ones=full.odd_ones)
    assert {lora.format for lora in built.loras} == set(FORMATS)


def test_the_base_sees_every_look_but_hears_only_its_own_names():
    """Half of each base batch is the named base scenes; the other half draws every shape and style under
    generic words, so the pool's names stay unknown to it."""
    rng = np.random.default_rng(0)
    first = scene_sampler(BASE_SHAPES, ("flat",))
    second = scene_sampler(SHAPES, STYLES, unnamed=frozenset(OBJECT_CONCEPTS + STYLE_CONCEPTS))
    images, texts = mixture(first, second, 0.5)(rng, 8)
    assert images.shape == (8, 3, 64, 64) and len(texts) == 8
    pool_words = {word for concept in OBJECT_CONCEPTS for word in SHAPE_WORDS[concept] if word != "shape"}
    pool_words |= {word for concept in STYLE_CONCEPTS for word in (concept, *STYLE_PRE[concept], *STYLE_POST[concept])}
    for text in [t for _ in range(30) for t in second(rng, 8)[1]]:
        assert not any(word in text for word in pool_words), text
    assert [len(mixture(first, second, share)(rng, 4)[1]) for share in (0.0, 1.0)] == [4, 4]
    with pytest.raises(ValueError, match="share must be in"):
        mixture(first, second, 1.5)


@pytest.fixture(scope="module")
def ci_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    lines: list[str] = []
    out = build_world("ci", out=root / "bundle", work=root / "work", progress=lines.append)
    return out, lines


def test_reduced_build_runs_every_stage_and_writes_a_manifest(ci_bundle):
    out, lines = ci_bundle
    for stage in ("autoencoder", "evaluator", "base", "base-gates", "pool", "strength", "previews", "single-loras",
                  "encoder", "gates"):
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


def test_each_regular_lora_carries_the_strength_its_maker_chose(ci_bundle):
    from safetensors import safe_open

    out, _ = ci_bundle
    strengths = PRESETS["ci"].lora_strengths
    chosen = json.loads(BundlePaths(out).manifest.read_text())["facts"]["lora_strengths"]
    for record in json.loads(BundlePaths(out).pool_index.read_text())["loras"]:
        with safe_open(str(out / record["file"]), "pt") as handle:
            in_file = (handle.metadata() or {}).get("autolora_world_strength")
        if record["kind"] in ("object", "style"):
            assert record["strength"] in strengths and chosen[record["id"]]["strength"] == record["strength"]
            assert float(in_file) == record["strength"]
        else:  # careless makers' LoRAs stay as trained
            assert record["strength"] == 1.0 and in_file is None and record["id"] not in chosen


def test_the_maker_keeps_the_weakest_strength_that_draws_best():
    import torch

    from autolora_worker.lora.canonical import LoraLayer
    from autolora_worker.world.strength import STRENGTH_SEEDS, choose_strength, strengthened

    accuracy = {1.0: 0.25, 1.5: 0.75, 2.0: 1.0}  # 2.0 is one image in four better than 1.5
    tried = []

    def draw_at(prompt, seeds, strength):
        tried.append(strength)
        return np.full((len(seeds),), strength)

    def judge(images):
        strength = float(images[0])
        right = round(accuracy[strength] * len(images))
        return {"style": ["striped"] * right + ["flat"] * (len(images) - right)}

    assert choose_strength(draw_at, judge, "striped", (2.0, 1.0, 1.5), ["p1"], tolerance=0.25) == (
        1.5, {"1": 0.25, "1.5": 0.75, "2": 1.0})  # within the tolerance of the best: the weaker wins
    assert choose_strength(draw_at, judge, "striped", (1.0, 1.5, 2.0), ["p1"], tolerance=0.0)[0] == 2.0
    assert len(STRENGTH_SEEDS) == 4 and not set(STRENGTH_SEEDS) & set(GATE_SEEDS)
    accuracy[1.0] = 1.0
    tried.clear()
    assert choose_strength(draw_at, judge, "striped", (1.0, 1.5, 2.0), ["p1", "p2"])[0] == 1.0
    assert tried == [1.0, 1.0]  # always right at 1.0: nothing stronger is tried

    layer = LoraLayer(torch.randn(2, 5).half(), torch.randn(4, 2).half(), 0.5)
    scaled = strengthened({"m": layer}, 1.5)["m"]
    assert scaled.up.dtype == torch.float16 and scaled.scale == 0.5 and torch.equal(scaled.down, layer.down)
    delta = lambda l: l.scale * l.up.float() @ l.down.float()
    assert torch.allclose(delta(scaled), 1.5 * delta(layer), rtol=1e-2, atol=1e-3)  # within fp16 rounding


def test_held_out_loras_never_reach_encoder_or_gate_training(ci_bundle):
    out, _ = ci_bundle
    manifest = json.loads(BundlePaths(out).manifest.read_text())
    records = json.loads(BundlePaths(out).pool_index.read_text())["loras"]
    held_out = {r["id"] for r in records if r["split"] == "heldout"}
    assert held_out
    assert manifest["facts"]["encoder_train_ids"] and not held_out & set(manifest["facts"]["encoder_train_ids"])
    assert manifest["facts"]["gate_train_ids"] and not held_out & set(manifest["facts"]["gate_train_ids"])


def test_the_reduced_build_measures_every_gate_without_holding_it_to_them(ci_bundle):
    out, lines = ci_bundle
    manifest = json.loads(BundlePaths(out).manifest.read_text())
    assert manifest["gates_enforced"] is False
    assert set(manifest["gates"]) == set(GATE_NAMES)
    for name, gate in manifest["gates"].items():
        assert any(line.startswith(f"[world] gate {name}: ") and line.endswith("(not enforced)") for line in lines), name
    assert 0.0 <= manifest["gates"]["base_own"]["values"]["shape_acc"] <= 1.0
    assert manifest["gates"]["single_lora_heldout"]["values"]["loras"] >= 1
    readme = BundlePaths(out).readme.read_text()
    assert "| base_own.shape_acc | ≥ 0.90 |" in readme and "not enforced (CI preset)" in readme


def test_a_build_that_misses_a_gate_stops_there_and_publishes_nothing(tmp_path):
    # The CI preset's 40-step evaluator cannot reach 0.97: held to the gates, the build stops right after it.
    lines: list[str] = []
    with pytest.raises(WorldGateError, match=r"world gate evaluator missed: evaluator\.\w+_acc = 0\.\d+, below the minimum 0\.97"):
        build_world("ci", out=tmp_path / "bundle", work=tmp_path / "work", progress=lines.append, enforce_gates=True)
    assert not (tmp_path / "bundle").exists()
    assert not any(line.startswith("[world] base:") for line in lines)
    assert (tmp_path / "work" / "evaluator.done.json").exists(), "the stage stays built for --resume"


def test_gate_bounds_and_the_readme_of_a_bundle_published_below_them():
    assert check("none_lacks", {"both_correct": 0.05}).passed
    assert check("none_lacks", {"both_correct": 0.2}).missed == ["none_lacks.both_correct = 0.200, above the maximum 0.10"]
    assert check("base_own", {"shape_acc": 0.95}).missed == ["base_own.colour_acc was not measured"]
    gates = {"base_own": {"values": {"shape_acc": 0.62, "colour_acc": 1.0}, "passed": False,
                          "missed": ["base_own.shape_acc = 0.620, below the minimum 0.90"]}}
    readme = bundle_readme({"versions": {"model": "pg-0-1"}, "torch": "2.13.0", "timings_s": {"base": 60.0},
                            "gates": gates, "gates_enforced": True, "missed_gates": gates["base_own"]["missed"]})
    assert "| base_own.shape_acc | ≥ 0.90 | 0.620 | missed |" in readme
    assert "| base_own.colour_acc | ≥ 0.95 | 1.000 | passed |" in readme
    assert "**Published below its gates** (`--below-gates`): base_own.shape_acc = 0.620, below the minimum 0.90." in readme


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


def test_redo_rebuilds_only_the_named_stage_and_keeps_the_rest(ci_bundle, tmp_path):
    out, _ = ci_bundle
    bundle = tmp_path / "bundle"
    shutil.copytree(out, bundle)
    before = json.loads(BundlePaths(bundle).manifest.read_text())
    lines: list[str] = []
    build_world("ci", out=bundle, work=tmp_path / "work", progress=lines.append, redo=("encoder",),
                encoder_kind_dropout=0.3)
    after = json.loads(BundlePaths(bundle).manifest.read_text())
    assert any(line == "[world] encoder: done" or line.startswith("[world] encoder: done in") for line in lines)
    assert not any(line.startswith("[world] pool: building") or line.startswith("[world] gates: building") for line in lines)
    assert after["files"]["encoder/encoder.safetensors"] != before["files"]["encoder/encoder.safetensors"]
    kept = {name: digest for name, digest in before["files"].items() if not name.startswith("encoder/")
            and name not in ("README.md",)}
    assert all(after["files"][name] == digest for name, digest in kept.items())
    assert after["config"]["encoder_kind_dropout"] == 0.3
    assert after["facts"]["gate_variant_kept"] == before["facts"]["gate_variant_kept"]
    # A kept stage's setting may not change under it: that bundle would not be what its manifest says.
    with pytest.raises(ValueError, match="settings of kept stages differ from the bundle's \\(lora_steps\\)"):
        build_world("ci", out=bundle, work=tmp_path / "work", redo=("encoder",), lora_steps=99)
    with pytest.raises(ValueError, match="unknown stage nope"):
        build_world("ci", out=bundle, work=tmp_path / "work", redo=("nope",))


def test_world_bench_fast_runs_every_table(ci_bundle, tmp_path, capsys):
    # On the committed bundle when there is one (issue [2/5] ships it), else on the reduced build above.
    bundle = default_bundle_dir() if BundlePaths(default_bundle_dir()).manifest.exists() else ci_bundle[0]
    gallery = tmp_path / "gallery.png"
    assert main(["bench", "world", "--fast", "--json", "--bundle", str(bundle), "--out", str(tmp_path),
                 "--gallery", str(gallery)]) == 0
    report = json.loads(capsys.readouterr().out)
    summary = report["summary"]
    for section, keys in SUMMARY_KEYS.items():
        assert keys <= set(summary[section]), section
    for metrics in summary["retrieval"].values():
        assert 0.0 <= metrics["recall_at_1"] <= metrics["recall_at_3"] <= 1.0
    for metrics in summary["table2"].values():
        low, high = metrics["both_correct_ci"]
        assert 0.0 <= low <= metrics["both_correct"] <= high <= 1.0
    assert {"attribute_acc_ci", "li_sim_ci"} <= set(summary["table34"]["k2"]["gated"])
    assert "both_correct_ci" in summary["table5"]["without_global"]
    low, high = summary["table2_gated_minus_direct"]["both_correct_ci"]
    assert -1.0 <= low <= summary["table2_gated_minus_direct"]["both_correct"] <= high <= 1.0
    # Every pair of Table 2 is listed with each method's score, so a win or a loss can be traced to its LoRAs.
    assert len(report["table2_detail"]) == report["table5_pairs"] > 0
    for pair in report["table2_detail"]:
        assert set(summary["table2"]) <= set(pair["both_correct"]) and pair["object"] != pair["style"]
    assert (tmp_path / "bench-world.md").exists() and (tmp_path / "fig4-heatmap.png").exists()
    from PIL import Image

    with Image.open(gallery) as picture:  # five columns of 128 px: base, each LoRA alone, direct, gated
        assert picture.width == 5 * 128 and picture.height > 128
    assert gallery.stat().st_size <= 400_000


def test_world_bench_refuses_a_folder_that_is_not_a_bundle(tmp_path, capsys):
    assert main(["bench", "world", "--fast", "--bundle", str(tmp_path)]) == 2
    assert "not a proving-ground bundle" in capsys.readouterr().err


def test_demo_on_a_bundle_retrieves_and_fuses(ci_bundle, tmp_path, capsys):
    out, _ = ci_bundle
    assert main(["demo", "--bundle", str(out), "--out", str(tmp_path), "--top", "2", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("retrieved ") == 2 and "the evaluator sees" in printed
    assert (tmp_path / "grid-none.png").exists() and (tmp_path / "grid-gated.png").exists()


def test_gate_study_compares_variants_with_direct_on_the_same_pairs(ci_bundle, tmp_path, capsys):
    out, _ = ci_bundle
    assert main(["bench", "gate-study", "--bundle", str(out), "--variants", "open-init,composed", "--pairs", "1",
                 "--steps", "2", "--sample-steps", "2", "--out", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    table = report["table"]
    from autolora_worker.world.gate_study import LAYER_ROWS, only_blocks

    assert list(table) == ["none", "direct", *LAYER_ROWS, "bundle gates", "open-init", "composed"]
    assert table["direct"]["minus_direct"] == 0.0  # a row's paired difference with itself
    for name, row in table.items():
        low, high = row["both_correct_ci"]
        assert 0.0 <= low <= row["both_correct"] <= high <= 1.0, name
    assert table["open-init"]["last_mse"] is not None and table["open-init"]["variant"]["init"] == "open"
    assert all(0.0 <= row["shape_acc"] <= 1.0 and 0.0 <= row["style_acc"] <= 1.0 for row in table.values())
    assert [pair["prompt"] for pair in report["detail"]] and (tmp_path / "gate-study.md").exists()
    # The same bundle gives the same pairs and prompts: variants are never judged on pairs picked after a look.
    from autolora_worker.world.gate_study import study_pairs

    records = json.loads(BundlePaths(out).pool_index.read_text())["loras"]
    assert [p for *_, p in study_pairs(records, 1)] == [pair["prompt"] for pair in report["detail"]]
    # A layer row keeps one LoRA's layers of one kind of block and nothing else.
    lora = read_lora_file(out / records[0]["file"])
    double = only_blocks(lora, "transformer_blocks.")
    assert double.layers and all(name.startswith("transformer_blocks.") for name in double.layers)
    assert set(double.layers) | set(only_blocks(lora, "single_transformer_blocks.").layers) == set(lora.layers)


def test_gate_study_refuses_an_unknown_variant(ci_bundle, capsys):
    assert main(["bench", "gate-study", "--bundle", str(ci_bundle[0]), "--variants", "magic", "--out", ""]) == 2
    assert "unknown gate variant(s) magic" in capsys.readouterr().err
