"""`python -m autolora_worker demo`: the worker's main job end to end on the embedded default model.

Writes a LoRA in a community file format, reads it back through the same path a downloaded one takes, samples a
2x2 grid of seeds with gated fusion next to the base model, and saves both grids as PNG. Until the proving-ground
bundle of issue [2/5] is built, the embedded default is the seeded random proving-ground model, so the images
show the machinery working (progress, fusion, reproducibility), not learned shapes.
"""

from __future__ import annotations

import base64
import io
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .engine import Engine
from .lora.canonical import LoraLayer
from .lora.formats import write_lora_file
from .models import load_backbone
from .protocol import GenerateRequest


def grid(images: list[np.ndarray]) -> Image.Image:
    top, bottom = np.concatenate(images[:2], axis=1), np.concatenate(images[2:4], axis=1)
    return Image.fromarray(np.concatenate([top, bottom], axis=0))


def run_demo(args) -> int:
    backbone = load_backbone("proving-ground", args.model_path, args.device)
    engine = Engine(backbone, args.gates)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(1)
    layers = {name: LoraLayer(torch.randn(8, layer.in_features, generator=generator) * 0.1,
                              torch.randn(layer.out_features, 8, generator=generator) * 0.1, 1.0)
              for name, layer in backbone.transformer.named_modules()
              if name.startswith("transformer_blocks.") and name.endswith(("attn.to_q", "attn.to_k", "attn.to_v", "ff.net.2"))}
    with tempfile.TemporaryDirectory() as folder:
        lora_path = Path(folder) / "demo-lora.safetensors"
        write_lora_file(layers, lora_path, "kohya")
        print(f"model {backbone.spec.name} version {backbone.version} on {backbone.device}; "
              f"inspect: {engine.inspect(str(lora_path))}")
        for fusion in ("none", "gated"):
            request = GenerateRequest(prompt=args.prompt, seeds=[1, 2, 3, 4], fusion=fusion,
                                      loras=[{"path": str(lora_path), "name": "demo-lora"}])
            results: list[dict] = []

            def emit(event: dict) -> None:
                if event["type"] == "job-progress":
                    print(f"\r  {fusion:>5}: step {event['step']}/{event['total']}", end="", flush=True)
                else:
                    results.append(event)

            engine.generate(request, emit, threading.Event())
            end = results[-1]
            if end["type"] != "job-end":
                print(f"\nerror: {end['message']}", file=sys.stderr)
                return 1
            images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(image["png_base64"])))) for image in end["images"]]
            path = out / f"grid-{fusion}.png"
            grid(images).resize((512, 512), Image.NEAREST).save(path)
            print(f"\n  {fusion:>5}: {path} ({end['timings']['sampling_ms']:.0f} ms sampling)")
    return 0
