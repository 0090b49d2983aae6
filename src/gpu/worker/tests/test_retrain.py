"""Gate retraining on the committed bundle: a candidate is trained (here briefly, from the bundle's gates) and
every candidate is measured on held-out LoRAs only, deterministically, so two measurements of one file agree and
untrained gates measure worse than trained ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from autolora_worker.world.retrain import evaluate_gates, train_candidate

BUNDLE = Path(__file__).resolve().parents[4] / "bundle"

pytestmark = pytest.mark.skipif(not (BUNDLE / "manifest.json").exists(), reason="needs the committed bundle")


def test_candidates_are_trained_and_measured_on_held_out_loras(tmp_path):
    quiet = lambda line: None  # noqa: E731
    fresh = train_candidate(BUNDLE, tmp_path / "fresh.safetensors", steps=0, progress=quiet)
    tuned = train_candidate(BUNDLE, tmp_path / "tuned.safetensors", steps=2, init=BUNDLE / "gates" / "gates.safetensors",
                            batch=2, progress=quiet)
    assert fresh["steps"] == 0 and fresh["final_loss"] is None and tuned["final_loss"] > 0
    assert fresh["train_loras"] > 10
    measure = lambda path: evaluate_gates(BUNDLE, path, pairs=1, steps=2, loss_batches=2, progress=quiet)  # noqa: E731
    trained = measure(BUNDLE / "gates" / "gates.safetensors")
    assert measure(BUNDLE / "gates" / "gates.safetensors") == trained  # deterministic
    untrained = measure(tmp_path / "fresh.safetensors")
    assert untrained["version"] == fresh["version"]
    assert untrained["heldout_loss"] > trained["heldout_loss"]
    assert set(trained) == {"version", "heldout_loss", "both_correct", "shape_acc", "style_acc", "pairs", "images"}
