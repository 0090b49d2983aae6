"""Sampling with a set of LoRAs under one fusion strategy: what previews, the world benchmark and tests share."""

from __future__ import annotations

import numpy as np

from ..fusion import FusionOptions, FusionSession, GateBank
from ..lora.canonical import CanonicalLora
from ..models import Backbone
from ..sampling import SampleRequest, sample


def generate(backbone: Backbone, prompt: str, seeds: list[int], loras: list[CanonicalLora] = (), *,
             strategy: str = "direct", gates: GateBank | None = None, global_lora: bool = True, steps: int | None = None,
             weights: list[float] | None = None) -> np.ndarray:
    """(len(seeds), H, W, 3) uint8 images of `prompt`, one per seed, with `loras` fused by `strategy`."""
    spec = backbone.spec
    request = SampleRequest(prompt=prompt, seeds=list(seeds), steps=steps or spec.default_steps,
                            guidance=spec.default_guidance, height=spec.default_size, width=spec.default_size,
                            true_cfg=spec.true_cfg)
    options = FusionOptions(strategy=strategy, global_lora=global_lora, seed=int(seeds[0]))
    weights = list(weights) if weights is not None else [1.0] * len(loras)
    with FusionSession(backbone.transformer, list(loras), weights, options, gates) as session:
        return sample(backbone, request, on_step_start=session.set_step)
