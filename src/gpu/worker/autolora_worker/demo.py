"""`python -m autolora_worker demo`: the worker's main job end to end on the embedded default.

With the proving-ground bundle (bundle/, built by `make world`): embed the prompt, retrieve the closest LoRAs
from the pool by their weights, and sample a 2x2 grid of seeds with gated fusion next to the base model's grid,
scoring both with the bundle's evaluator. Without a bundle it falls back to a seeded random model and a LoRA it
writes itself, which shows the machinery (file formats, progress, fusion, reproducibility), not learned shapes.
"""

from __future__ import annotations

import base64
import io
import json
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


def _run_job(engine: Engine, request: GenerateRequest, label: str) -> dict:
    results: list[dict] = []

    def emit(event: dict) -> None:
        if event["type"] == "job-progress":
            print(f"\r  {label:>5}: step {event['step']}/{event['total']}", end="", flush=True)
        else:
            results.append(event)

    engine.generate(request, emit, threading.Event())
    print()
    return results[-1]


def _images(end: dict) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(image["png_base64"])))) for image in end["images"]]


def _retrieve(bundle: Path, backbone, prompt: str, top: int) -> list[tuple[dict, float]]:
    """The pool's LoRAs closest to the prompt by the weight encoder: what the bot's retrieval does."""
    from .lora.formats import read_lora_file
    from .encoder import embed_loras, load_encoder

    records = json.loads((bundle / "pool" / "pool.json").read_text())["loras"]
    encoder = load_encoder(bundle / "encoder").eval()
    with torch.no_grad():
        vectors = embed_loras(encoder, [read_lora_file(bundle / r["file"]) for r in records]).float()
    query = backbone.text_encoder([prompt]).pooled.float()[0]
    scores = vectors @ query
    order = torch.argsort(scores, descending=True)[:top].tolist()
    return [(records[i], float(scores[i])) for i in order]


def run_demo(args) -> int:
    from .world.bundle import BundlePaths, default_bundle_dir

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = BundlePaths(args.bundle or default_bundle_dir())
    if args.model_path is None and bundle.manifest.exists():
        return _bundle_demo(args, bundle, out)
    print(f"no proving-ground bundle at {bundle.root} (build one with `make world`): using a seeded random model")
    return _random_demo(args, out)


def _bundle_demo(args, bundle, out: Path) -> int:
    from .world.evaluator import load_evaluator

    backbone = load_backbone("proving-ground", bundle.model, args.device)
    engine = Engine(backbone, args.gates or bundle.gates)
    evaluator = load_evaluator(bundle.evaluator)
    print(f"model {backbone.version}, gates {engine.gates.info.version}, on {backbone.device}")
    print(f"prompt: {args.prompt!r}")
    retrieved = _retrieve(bundle.root, backbone, args.prompt, args.top)
    for record, score in retrieved:
        print(f"  retrieved {record['id']:<24} cosine {score:.3f}  ({record['format']}, rank {record['rank']})")
    loras = [{"path": str(bundle.root / record["file"]), "name": record["id"]} for record, _ in retrieved]
    for fusion in ("none", "gated"):
        request = GenerateRequest(prompt=args.prompt, seeds=[1, 2, 3, 4], fusion=fusion,
                                  loras=loras if fusion != "none" else [])
        end = _run_job(engine, request, fusion)
        if end["type"] != "job-end":
            print(f"error: {end['message']}", file=sys.stderr)
            return 1
        images = _images(end)
        predicted = evaluator.predict(np.stack(images))
        path = out / f"grid-{fusion}.png"
        grid(images).resize((512, 512), Image.NEAREST).save(path)
        seen = ", ".join(f"{c} {s} {sh}" for sh, s, c in zip(predicted["shape"], predicted["style"], predicted["colour"]))
        print(f"  {fusion:>5}: {path} ({end['timings']['sampling_ms']:.0f} ms sampling); the evaluator sees: {seen}")
    return 0


def _random_demo(args, out: Path) -> int:
    backbone = load_backbone("proving-ground", args.model_path, args.device)
    engine = Engine(backbone, args.gates)
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
            end = _run_job(engine, request, fusion)
            if end["type"] != "job-end":
                print(f"error: {end['message']}", file=sys.stderr)
                return 1
            path = out / f"grid-{fusion}.png"
            grid(_images(end)).resize((512, 512), Image.NEAREST).save(path)
            print(f"  {fusion:>5}: {path} ({end['timings']['sampling_ms']:.0f} ms sampling)")
    return 0
