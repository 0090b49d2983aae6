"""`make text-encoder`: the frozen text encoder exported as ONNX with its tokenizer, for the host, against PyTorch."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from autolora_worker.__main__ import main

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
def test_onnx_text_encoder_matches_pytorch(backbone, tmp_path, capsys):
    import onnxruntime
    from transformers import AutoTokenizer

    out = tmp_path / "text-encoder"
    assert main(["export-text-encoder", "--out", str(out)]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config == {"out": str(out), **json.loads((out / "text-encoder.json").read_text())}
    assert config["dim"] == 384 and config["pooling"] == "mean" and config["normalised"] is True
    assert {"tokenizer.json", "vocab.txt", "tokenizer_config.json"} <= set(config["tokenizer_files"])
    assert hashlib.sha256((out / "text-encoder.onnx").read_bytes()).hexdigest() == config["sha256"]

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
