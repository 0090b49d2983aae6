"""Name tables between diffusers' FluxTransformer2DModel modules and the names FLUX LoRA files use.

Reading goes through diffusers' converters; these tables serve the other direction (writing files) and tell
which module names and shapes a family's transformer really has.
"""

from __future__ import annotations

import functools
import re

import torch
from diffusers import FluxTransformer2DModel

from ..families import get_family

# A fused tensor in a BFL-named file (file path inside a block) → the diffusers modules whose rows it stacks,
# in row order. Kohya and ComfyUI files use these same paths with other separators.
DOUBLE_BLOCK = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_mod.lin": ("norm1_context.linear",),
}
SINGLE_BLOCK = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}

# XLabs LoRAs live in attention processors, so they only reach attention: in single blocks `qkv_lora` covers the
# q/k/v rows of linear1 but not its MLP rows.
XLABS_DOUBLE_BLOCK = {
    "qkv_lora1": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "proj_lora1": ("attn.to_out.0",),
    "qkv_lora2": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "proj_lora2": ("attn.to_add_out",),
}
XLABS_SINGLE_BLOCK = {
    "qkv_lora": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "proj_lora": ("proj_out",),
}

# The attention modules that diffusers' kohya "mixture" converter (`lora_transformer_…` names) maps correctly;
# it maps any other block module (ff, norms, proj_mlp, proj_out) to the block itself.
MIXTURE_MODULES = tuple(
    f"attn.{name}" for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out")
)

_BLOCK_MODULE = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")

# A file tensor: its name in the file (without the down/up suffix) and the full module names it stacks.
Target = tuple[str, tuple[str, ...]]


def _block_target(
    module: str, double: dict[str, tuple[str, ...]], single: dict[str, tuple[str, ...]], template: str
) -> Target | None:
    match = _BLOCK_MODULE.match(module)
    if match is None:
        return None
    kind, index, rest = match.groups()
    table, file_kind = (double, "double_blocks") if kind == "transformer_blocks" else (single, "single_blocks")
    for path, pieces in table.items():
        if rest in pieces:
            name = template.format(kind=file_kind, index=index, path=path)
            return name, tuple(f"{kind}.{index}.{piece}" for piece in pieces)
    return None


def bfl_target(module: str) -> Target | None:
    """`transformer_blocks.0.attn.to_k` → (`double_blocks.0.img_attn.qkv`, its q, k, v modules); None if unnamed."""
    return _block_target(module, DOUBLE_BLOCK, SINGLE_BLOCK, "{kind}.{index}.{path}")


def xlabs_target(module: str) -> Target | None:
    """`transformer_blocks.0.attn.to_k` → (`double_blocks.0.processor.qkv_lora1`, its q, k, v modules)."""
    return _block_target(module, XLABS_DOUBLE_BLOCK, XLABS_SINGLE_BLOCK, "{kind}.{index}.processor.{path}")


def mixture_target(module: str) -> Target | None:
    """A per-module kohya name (`lora_transformer_…`) exists only for block attention linears."""
    match = _BLOCK_MODULE.match(module)
    if match is None or match.group(3) not in MIXTURE_MODULES:
        return None
    return module, (module,)


def block_pattern(module: str) -> str:
    """`single_transformer_blocks.7.attn.to_q` → `single_transformer_blocks.N.attn.to_q`, the same in every family."""
    return _BLOCK_MODULE.sub(lambda m: f"{m.group(1)}.N.{m.group(3)}", module)


@functools.cache
def linear_shapes(family: str) -> dict[str, tuple[int, int]]:
    """Every nn.Linear of the family's transformer: module name → (in_features, out_features).

    Built on the meta device, so it costs a tenth of a second even for FLUX.1 and allocates no weights.
    """
    with torch.device("meta"):
        model = FluxTransformer2DModel(**get_family(family).transformer)
    return {
        name: (layer.in_features, layer.out_features)
        for name, layer in model.named_modules()
        if isinstance(layer, torch.nn.Linear)
    }


@functools.cache
def flux_linear_patterns() -> frozenset[str]:
    """The Linear names of any FLUX-shaped transformer, block indices replaced by N (for LoRAs of unknown family)."""
    return frozenset(block_pattern(name) for name in linear_shapes("proving-ground"))


@functools.cache
def inner_input_patterns() -> frozenset[str]:
    """Linears whose input is the hidden state itself, so their in_features is the family's inner dim."""
    spec = get_family("proving-ground")
    shapes = linear_shapes(spec.name)
    return frozenset(block_pattern(name) for name, (inputs, _) in shapes.items() if inputs == spec.inner_dim)
