"""Import the gates the AutoLoRA authors published for FLUX.1-dev (DiffSynth-Studio's `FluxLoraPatcher` weights,
HF DiffSynth-Studio/LoRAFusion-preview-FLUX.1-dev) as our versioned gate file for the `flux` family.

A `LoraMerger` is our `Gate` under other names (same formula, LayerNorm eps 1e-5 in both), but it sits on
DiffSynth's own FLUX layers, some of which fuse several of diffusers' linears into one output. The conversion:

- A gate on a linear diffusers also has (`attn.a_to_out` → `attn.to_out.0`, …) is copied as it is: exact.
- A gate on a fused linear (`attn.a_to_qkv`, `attn.b_to_qkv`, the single blocks' `to_qkv_mlp`; 76 of 304) is cut
  into one gate per diffusers linear, along the output channels in the order DiffSynth stacks them. Its five
  per-channel vectors are cut exactly, but its two LayerNorms then normalise over each slice (3072 or 12288
  channels) instead of the whole fused output (9216 or 21504), so those gates see differently normalised inputs
  than the authors trained them on: an approximation, said so in every import's result.
- Our bank has a gate on every linear of the transformer and `GateBank.load` requires all of them. DiffSynth has no
  gate on the 10 linears outside the blocks (the time, guidance and text embedders, `x_embedder`,
  `context_embedder`, `norm_out.linear`, `proj_out`) and adds LoRAs there directly. Those get pass-through gates:
  w_x = w_l = w_c = b = 0 so every gate is σ(0) = ½, and w_o = 2, so x' = x + Σᵢ lᵢ exactly as DiffSynth does
  (½ and 2 are exact in bf16 and fp16 too).

Every check runs before anything is written, and the file is written beside OUT and renamed over it, so a refused
or failed import leaves OUT as it was.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import safetensors.torch
import torch

from ..families import get_family
from ..models import meta_flux_transformer
from .gates import GateBank, gate_dims

FAMILY = "flux"
SOURCE_PREFIX = "model_dict."  # FluxLoraPatcher's ModuleDict; a file saved from it elsewhere may lack it
SEPARATOR = "___"  # DiffSynth's stand-in for "." in ModuleDict keys

# LoraMerger parameter → our Gate parameter.
PARAMETERS = {
    "weight_base": "w_x", "weight_lora": "w_l", "weight_cross": "w_c", "bias": "b", "weight_out": "w_o",
    "norm_base.weight": "ln_x.weight", "norm_base.bias": "ln_x.bias",
    "norm_lora.weight": "ln_l.weight", "norm_lora.bias": "ln_l.bias",
}

_WIDTH = get_family(FAMILY).inner_dim  # 3072
# A DiffSynth gated linear inside a block → the diffusers linears (inside the same block) whose outputs it stacks,
# in channel order, with their widths. Read from DiffSynth's FluxDiTStateDictConverter.from_diffusers.
DOUBLE_BLOCK = {
    "attn.a_to_qkv": (("attn.to_q", _WIDTH), ("attn.to_k", _WIDTH), ("attn.to_v", _WIDTH)),
    "attn.a_to_out": (("attn.to_out.0", _WIDTH),),
    "ff_a.0": (("ff.net.0.proj", 4 * _WIDTH),),
    "ff_a.2": (("ff.net.2", _WIDTH),),
    "norm1_a.linear": (("norm1.linear", 6 * _WIDTH),),
    "attn.b_to_qkv": (("attn.add_q_proj", _WIDTH), ("attn.add_k_proj", _WIDTH), ("attn.add_v_proj", _WIDTH)),
    "attn.b_to_out": (("attn.to_add_out", _WIDTH),),
    "ff_b.0": (("ff_context.net.0.proj", 4 * _WIDTH),),
    "ff_b.2": (("ff_context.net.2", _WIDTH),),
    "norm1_b.linear": (("norm1_context.linear", 6 * _WIDTH),),
}
SINGLE_BLOCK = {
    "to_qkv_mlp": (("attn.to_q", _WIDTH), ("attn.to_k", _WIDTH), ("attn.to_v", _WIDTH), ("proj_mlp", 4 * _WIDTH)),
    "proj_out": (("proj_out", _WIDTH),),
    "norm.linear": (("norm.linear", 3 * _WIDTH),),
}
# Our flux linears outside the blocks, where DiffSynth has no gate and adds LoRAs directly.
PASS_THROUGH = (
    "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
    "time_text_embed.guidance_embedder.linear_1", "time_text_embed.guidance_embedder.linear_2",
    "time_text_embed.text_embedder.linear_1", "time_text_embed.text_embedder.linear_2",
    "x_embedder", "context_embedder", "norm_out.linear", "proj_out",
)
SPLIT_NOTE = ("gates on DiffSynth's fused linears were split per diffusers linear: their vectors are exact, but "
              "their LayerNorms now normalise over each slice instead of the whole fused output, an approximation "
              "of the authors' gates; layers DiffSynth has no gate for add LoRAs directly (pass-through gates)")


def source_layout() -> dict[str, tuple[tuple[str, int], ...]]:
    """Every gate of the published file, by DiffSynth module name → the (diffusers module, width) slices it covers."""
    transformer = get_family(FAMILY).transformer
    blocks = (("blocks", "transformer_blocks", transformer["num_layers"], DOUBLE_BLOCK),
              ("single_blocks", "single_transformer_blocks", transformer["num_single_layers"], SINGLE_BLOCK))
    layout = {}
    for prefix, ours, count, block in blocks:
        for index in range(count):
            for module, slices in block.items():
                layout[f"{prefix}.{index}.{module}"] = tuple((f"{ours}.{index}.{name}", width)
                                                             for name, width in slices)
    return layout


def flux_gate_dims() -> dict[str, int]:
    """The gate bank a FLUX.1 worker loads: diffusers' transformer built on the meta device (no weights), wrapped."""
    return gate_dims(meta_flux_transformer())


def import_diffsynth_gates(source: str | Path, out: str | Path, version: str | None = None) -> dict:
    """Convert a FluxLoraPatcher file into our gate file at `out`; returns what was done (for one JSON line).

    Raises ValueError naming what differs when the file is not the published layout; nothing is written then.
    """
    source, out = Path(source), Path(out)
    try:
        data = source.read_bytes()
        tensors = safetensors.torch.load(data)
    except Exception as error:  # OSError, or safetensors' own error types: one clear line is what matters
        raise ValueError(f"cannot read {source} as safetensors: {error}") from None
    digest = hashlib.sha256(data).hexdigest()
    layout = source_layout()
    merged = _read_gates(tensors, layout, source)
    dims = flux_gate_dims()
    _check_mapping(layout, dims)

    version = version or f"diffsynth-{digest[:12]}"
    bank = GateBank(dims, version=version, family=FAMILY)
    states = _split(merged, layout) | {name: _pass_through(dims[name]) for name in PASS_THROUGH}
    for name, state in states.items():
        bank.gate(name).load_state_dict(state)
    _save_beside(bank, out, version)
    return {
        "source": str(source),
        "source_sha256": digest,
        "gates_converted": len(merged),
        "gates_split": sum(len(slices) > 1 for slices in layout.values()),
        "pass_through_layers": len(PASS_THROUGH),
        "layers": len(dims),
        "version": version,
        "out": str(out),
        "note": SPLIT_NOTE,
    }


def _read_gates(tensors: dict[str, torch.Tensor], layout: dict, source: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The file's LoraMerger parameters as float32, by DiffSynth module name, checked against `layout`."""
    merged: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        local = key.removeprefix(SOURCE_PREFIX)
        module, _, parameter = local.partition(".")
        if parameter not in PARAMETERS:
            raise ValueError(_unknown_key(key, local, source))
        gate = merged.setdefault(module.replace(SEPARATOR, "."), {})
        if parameter in gate:
            raise ValueError(f"{source}: {module}.{parameter} appears twice, with and without {SOURCE_PREFIX!r}")
        gate[parameter] = tensor

    missing, extra = sorted(set(layout) - set(merged)), sorted(set(merged) - set(layout))
    if missing or extra:
        found = [f"{len(missing)} gates missing (e.g. {missing[:3]})"] if missing else []
        found += [f"{len(extra)} gates DiffSynth's FLUX.1 patcher does not have (e.g. {extra[:3]})"] if extra else []
        raise ValueError(f"{source} is not the FLUX.1-dev FluxLoraPatcher layout ({len(layout)} gates): "
                         + ", ".join(found))
    incomplete = [f"{module}.{parameter}" for module in sorted(merged) for parameter in PARAMETERS
                  if parameter not in merged[module]]
    if incomplete:
        raise ValueError(f"{source}: {len(incomplete)} gate parameters missing (e.g. {incomplete[:3]})")

    for module, gate in merged.items():
        width = sum(slice_width for _, slice_width in layout[module])
        for parameter, tensor in gate.items():
            key = f"{module.replace('.', SEPARATOR)}.{parameter}"
            if tensor.shape != (width,):
                raise ValueError(f"{source}: {key} has shape {tuple(tensor.shape)}, expected ({width},)")
            if not tensor.is_floating_point():
                raise ValueError(f"{source}: {key} is {tensor.dtype}, gate parameters are floating point")
            gate[parameter] = tensor = tensor.float()
            if not torch.isfinite(tensor).all():
                raise ValueError(f"{source}: {key} has non-finite values (NaN or inf)")
    return merged


def _unknown_key(key: str, local: str, source: Path) -> str:
    """Why `key` is not '<module>.<parameter>': a prefix we do not know, a dotted module name, or another parameter."""
    layout_hint = (f"FluxLoraPatcher keys read '{SOURCE_PREFIX}<module>.<parameter>' or '<module>.<parameter>', "
                   f"the module's dots written {SEPARATOR!r}")
    for parameter in sorted(PARAMETERS, key=len, reverse=True):  # "norm_base.bias" before "bias"
        if local.endswith(f".{parameter}"):
            segments = local.removesuffix(f".{parameter}").split(".")
            if len(segments) > 1 and SEPARATOR in segments[-1]:
                return f"{source}: key {key!r} has an unknown prefix; {layout_hint}"
            if not any(SEPARATOR in segment for segment in segments):
                return f"{source}: key {key!r} does not name its module as DiffSynth does; {layout_hint}"
            break
    return (f"{source}: key {key!r}: {local.partition('.')[2]!r} is not a LoraMerger parameter "
            f"(expected one of {', '.join(PARAMETERS)})")


def _split(merged: dict[str, dict[str, torch.Tensor]], layout: dict) -> dict[str, dict[str, torch.Tensor]]:
    """Our gate state per diffusers linear that DiffSynth covers: each of its gates cut into its slices."""
    states: dict[str, dict[str, torch.Tensor]] = {}
    for module, slices in layout.items():
        start = 0
        for name, width in slices:
            states[name] = {PARAMETERS[parameter]: tensor[start:start + width]
                            for parameter, tensor in merged[module].items()}
            start += width
    return states


def _check_mapping(layout: dict, dims: dict[str, int]) -> None:
    """Our tables against diffusers' model: a diffusers release that renames or adds a linear fails here."""
    mapped = {name: width for slices in layout.values() for name, width in slices}
    wrong = sorted(name for name, width in mapped.items() if dims.get(name) != width)
    uncovered = sorted(set(dims) - set(mapped) - set(PASS_THROUGH))
    absent = sorted(set(PASS_THROUGH) - set(dims))
    if wrong or uncovered or absent:
        raise ValueError(f"the DiffSynth → diffusers mapping does not fit this diffusers' FluxTransformer2DModel: "
                         f"{len(wrong)} mapped layers missing or of another width (e.g. {wrong[:3]}), "
                         f"{len(uncovered)} layers neither mapped nor pass-through (e.g. {uncovered[:3]}), "
                         f"{len(absent)} pass-through layers missing (e.g. {absent[:3]})")


def _pass_through(width: int) -> dict[str, torch.Tensor]:
    zeros, ones = torch.zeros(width), torch.ones(width)
    return {"w_x": zeros, "w_l": zeros, "w_c": zeros, "b": zeros, "w_o": 2 * ones,
            "ln_x.weight": ones, "ln_x.bias": zeros, "ln_l.weight": ones, "ln_l.bias": zeros}


def _save_beside(bank: GateBank, out: Path, version: str) -> None:
    """Write to a temporary file in OUT's folder and rename it over OUT, so OUT is never half written."""
    if not out.parent.is_dir():
        raise ValueError(f"cannot write {out}: folder {out.parent} does not exist")
    temporary = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        bank.save(temporary, version)
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
