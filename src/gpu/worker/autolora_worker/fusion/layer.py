"""Wrapped linears: where a fusion strategy meets the model, without ever touching base weights.

`wrap_linears` swaps every `nn.Linear` of the transformer for a `FusedLinear` that holds the original layer. A
request installs one `LayerPlan` per adapted layer for its duration (`FusionSession`) and removes them after,
so one request cannot leak into the next and a layer with no plan is exactly the base layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Branch:
    """One LoRA at one layer, on the model's device and dtype: ΔW x = up @ (down @ x), `up` pre-scaled."""

    down: torch.Tensor  # (r, in)
    up: torch.Tensor  # (out, r), scale folded in
    lora_index: int  # position of its LoRA in the request, for strategies that care about order (K-LoRA)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass
class StepState:
    """Where sampling is, for strategies whose behaviour depends on the denoising step (K-LoRA)."""

    step: int = 0
    total: int = 1


class LayerPlan:
    """What a strategy does at one layer for one request, in place of the base layer's forward."""

    def forward(self, base: nn.Linear, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        raise NotImplementedError


class FusedLinear(nn.Module):
    def __init__(self, base: nn.Linear, name: str, index: int):
        super().__init__()
        self.base = base
        self.name = name
        self.index = index  # order among wrapped layers; K-LoRA's schedule advances along it
        self.plan: LayerPlan | None = None

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        # diffusers reads `.weight.dtype` of some linears (e.g. the time embedder) to cast inputs.
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plan is None:
            return self.base(x)
        return self.plan.forward(self.base, x)


def wrap_linears(model: nn.Module) -> dict[str, FusedLinear]:
    """Replace each nn.Linear of `model` in place by a FusedLinear; idempotent. Returns them by module name."""
    existing = {name: m for name, m in model.named_modules() if isinstance(m, FusedLinear)}
    if existing:
        return existing
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    wrapped: dict[str, FusedLinear] = {}
    for index, (name, linear) in enumerate(targets):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        fused = FusedLinear(linear, name, index)
        setattr(parent, child, fused)
        wrapped[name] = fused
    return wrapped


def fused_layers(model: nn.Module) -> dict[str, FusedLinear]:
    layers = {name: m for name, m in model.named_modules() if isinstance(m, FusedLinear)}
    if not layers:
        raise RuntimeError("model has no FusedLinear layers; call wrap_linears(model) once after loading it")
    return layers

