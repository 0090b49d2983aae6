"""FLUX.1-shaped LoRA files anyone can make, for bootstrapping and testing a flux LoRA encoder without a crawl.

`python -m autolora_worker tiny-flux-loras --out DIR` writes LoRAs of a few visual concepts at FLUX.1's real widths
(3072) on the double-block attention linears every community format can hold, rotating through all five formats,
with `manifest.json` (what each file is, with captions naming its concept and an uninformative name, as many
community uploads have) and `examples.json` (the same LoRAs as `encoder bootstrap --examples` reads them).

Each concept has fixed random factors per module; each of its LoRAs is those factors plus independent noise, in a
random basis of the rank space and at a random strength, so LoRAs of one concept are alike in ΔW but never equal,
and nothing but their weights tells their concept.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .lora.canonical import LoraLayer
from .lora.formats import FORMATS, write_lora_file
from .lora.keys import linear_shapes

FAMILY = "flux"  # the files are FLUX.1-shaped whatever flux model reads them (tiny_flux.py's stand-in too)
CONCEPTS = ("neon", "watercolor", "pixel art", "origami", "stained glass", "charcoal sketch", "mosaic", "embroidery",
            "ukiyo-e", "claymation", "low poly", "graffiti")
CAPTIONS = ("a cat in {concept} style", "{concept} illustration of a house", "portrait, {concept}")
# The double-block attention linears: the modules XLabs files reach too, so every format writes the same LoRA.
MODULES = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
           "attn.add_v_proj", "attn.to_add_out")
BLOCKS = (0, 1)
NOISE = 0.5  # per-LoRA noise, relative to the concept's factors: ΔW keeps ~60% of its energy from the concept
STRENGTHS = (0.5, 2.0)  # a LoRA's scale (alpha / rank) is drawn log-uniformly between these
FACTOR_STD = 0.02  # the order of trained LoRA factors; the encoder divides each layer's scale away anyway
DTYPE = torch.bfloat16  # what most FLUX LoRAs are saved in, and half of float32's size


def write_flux_loras(out: str | Path, concepts: int = 8, per_concept: int = 5, rank: int = 2, seed: int = 0) -> dict:
    """Write `concepts` × `per_concept` LoRA files, `manifest.json` and `examples.json` to the folder `out` (created;
    refused if it holds anything). Returns a summary."""
    if not 1 <= concepts <= len(CONCEPTS):
        raise ValueError(f"--concepts {concepts}: between 1 and {len(CONCEPTS)} ({', '.join(CONCEPTS)})")
    if per_concept < 1 or rank < 1:
        raise ValueError(f"--per-concept {per_concept} and --rank {rank} must be at least 1")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; give a new folder")
    out.mkdir(parents=True, exist_ok=True)

    generator = torch.Generator().manual_seed(seed)
    shapes = linear_shapes(FAMILY)
    modules = [f"transformer_blocks.{block}.{module}" for block in BLOCKS for module in MODULES]
    centres = [{module: _factors(shapes[module], rank, generator) for module in modules} for _ in range(concepts)]
    # Concepts are dealt to file numbers at random, so neither a name nor the file order tells a concept.
    assignment = torch.randperm(concepts * per_concept, generator=generator).tolist()
    records, examples, size = [], [], 0
    for number, slot in enumerate(assignment):
        concept = CONCEPTS[slot % concepts]
        strength = math.exp(float(torch.empty(()).uniform_(*map(math.log, STRENGTHS), generator=generator)))
        basis = torch.linalg.qr(torch.randn(rank, rank, generator=generator)).Q  # (R, R) orthogonal
        layers = {}
        for module, (down, up) in centres[slot % concepts].items():
            down = basis @ (down + NOISE * FACTOR_STD * torch.randn(down.shape, generator=generator))  # (R, in)
            up = (up + NOISE * FACTOR_STD * torch.randn(up.shape, generator=generator)) @ basis.T  # (out, R)
            layers[module] = LoraLayer(down.to(DTYPE), up.to(DTYPE), strength)
        name = f"lora-{number:04d}"
        file_format = FORMATS[number % len(FORMATS)]
        path = out / f"{name}.safetensors"
        write_lora_file(layers, path, file_format)
        size += path.stat().st_size
        captions = [template.format(concept=concept) for template in CAPTIONS]
        records.append({"file": path.name, "format": file_format, "concept": concept, "name": name, "tags": [],
                        "captions": captions})
        examples.append({"lora": str(path.resolve()), "captions": captions, "text": [name]})
    (out / "manifest.json").write_text(json.dumps({"loras": records}, indent=1) + "\n")
    (out / "examples.json").write_text(json.dumps({"examples": examples}, indent=1) + "\n")
    return {"out": str(out), "family": FAMILY, "loras": len(records), "concepts": list(CONCEPTS[:concepts]),
            "modules": len(modules), "rank": rank, "bytes": size}


def _factors(shape: tuple[int, int], rank: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, outputs = shape
    return (FACTOR_STD * torch.randn(rank, inputs, generator=generator),
            FACTOR_STD * torch.randn(outputs, rank, generator=generator))


def tiny_flux_loras_command(out: str, concepts: int, per_concept: int, rank: int, seed: int) -> int:
    import sys

    try:
        print(json.dumps(write_flux_loras(out, concepts, per_concept, rank, seed)))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


# What community FLUX.1 LoRAs adapt, by name: the attention linears of every block, or every linear of every block.
LAYER_SETS = {
    "attention": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                  "attn.add_v_proj", "attn.to_add_out"),
    "all": None,
}
# (rank, layers) of the files `full-size-flux-loras` writes in turn: 52-209 MB in bf16, as real FLUX.1 LoRAs are.
FULL_SIZE_KINDS = ((16, "attention"), (32, "attention"), (16, "all"), (64, "attention"), (8, "all"))


def write_full_size_flux_loras(out: str | Path, count: int = 5, seed: int = 0) -> dict:
    """Write `count` LoRA files at FLUX.1's real size (every double and single block, ranks 16-64, attention only or
    every linear, bf16, diffusers and kohya formats in turn) to the folder `out` (created; refused if it holds
    anything), with `manifest.json`. Random factors: for measuring what reading, hashing, storing and embedding a real
    LoRA costs (the ingest benchmark), not for what they draw."""
    if count < 1:
        raise ValueError(f"--count {count} must be at least 1")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; give a new folder")
    out.mkdir(parents=True, exist_ok=True)
    shapes = linear_shapes(FAMILY)
    blocks = [name for name in shapes if name.startswith(("transformer_blocks.", "single_transformer_blocks."))]
    generator = torch.Generator().manual_seed(seed)
    records, size = [], 0
    for number in range(count):
        rank, layer_set = FULL_SIZE_KINDS[number % len(FULL_SIZE_KINDS)]
        wanted = LAYER_SETS[layer_set]
        modules = [name for name in blocks if wanted is None or name.split(".", 2)[2] in wanted]
        layers = {module: LoraLayer((FACTOR_STD * torch.randn(rank, shapes[module][0], generator=generator)).to(DTYPE),
                                    (FACTOR_STD * torch.randn(shapes[module][1], rank, generator=generator)).to(DTYPE),
                                    1.0)
                  for module in modules}
        file_format = ("diffusers", "kohya")[number % 2]
        path = out / f"flux-r{rank}-{layer_set}-{number:03d}.safetensors"
        write_lora_file(layers, path, file_format)
        size += path.stat().st_size
        records.append({"file": path.name, "format": file_format, "rank": rank, "layers": layer_set,
                        "modules": len(modules), "bytes": path.stat().st_size})
    (out / "manifest.json").write_text(json.dumps({"loras": records}, indent=1) + "\n")
    return {"out": str(out), "family": FAMILY, "loras": len(records), "bytes": size}


def full_size_flux_loras_command(out: str, count: int, seed: int) -> int:
    import sys

    try:
        print(json.dumps(write_full_size_flux_loras(out, count, seed)))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
