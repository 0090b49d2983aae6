"""One request's fusion: install per-layer plans on a wrapped model, track the step, remove them afterwards."""

from __future__ import annotations

from torch import nn

from ..errors import IncompatibleLoraError
from ..lora.canonical import CanonicalLora
from .gates import GateBank
from .layer import Branch, StepState, fused_layers
from .strategies import FusionOptions, get_strategy


def layer_branches(layers, loras: list[CanonicalLora], weights: list[float]) -> dict[str, list[Branch]]:
    """Every LoRA's factors at every layer it has, cast to that layer's device and dtype, strength folded in."""
    if len(weights) != len(loras):
        raise ValueError(f"{len(loras)} LoRAs but {len(weights)} weights")
    branches: dict[str, list[Branch]] = {}
    for index, (lora, weight) in enumerate(zip(loras, weights)):
        label = lora.name or lora.sha256[:12] or f"LoRA #{index + 1}"
        for module, factors in lora.layers.items():
            layer = layers.get(module)
            if layer is None:
                raise IncompatibleLoraError(f"{label}: layer {module} does not exist in the loaded model")
            if (factors.out_features, factors.in_features) != (layer.out_features, layer.in_features):
                raise IncompatibleLoraError(
                    f"{label}: layer {module} is {factors.out_features}x{factors.in_features} in the LoRA but "
                    f"{layer.out_features}x{layer.in_features} in the model (a LoRA for another model?)")
            weight_tensor = layer.base.weight
            branches.setdefault(module, []).append(Branch(
                down=factors.down.to(weight_tensor.device, weight_tensor.dtype),
                up=(factors.up.float() * (factors.scale * weight)).to(weight_tensor.device, weight_tensor.dtype),
                lora_index=index,
            ))
    return branches


class FusionSession:
    """`with FusionSession(model, loras, weights, options, gates) as session:` … `session.set_step(i, n)` …

    Plans exist only inside the `with`; leaving it, normally or by an exception or a cancellation, restores the
    base model exactly.
    """

    def __init__(self, model: nn.Module, loras: list[CanonicalLora], weights: list[float],
                 options: FusionOptions, gates: GateBank | None = None):
        self.layers = fused_layers(model)
        self.strategy = get_strategy(options.strategy)
        self.step = StepState()
        branches = layer_branches(self.layers, loras, weights)
        self.plans = self.strategy.build(self.layers, branches, options, self.step, gates) if branches else {}

    def set_step(self, step: int, total: int) -> None:
        self.step.step, self.step.total = step, total

    def __enter__(self) -> "FusionSession":
        for name, plan in self.plans.items():
            self.layers[name].plan = plan
        return self

    def __exit__(self, *exc_info) -> None:
        for layer in self.layers.values():
            layer.plan = None
