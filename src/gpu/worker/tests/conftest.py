"""Shared fixtures: tiny real models (never mocks) and LoRAs with random factors."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The test models are tiny: one thread is faster than two fighting the other test runner for 2 cores.
torch.set_num_threads(1)

from autolora_worker.fusion import fused_layers  # noqa: E402
from autolora_worker.lora.canonical import CanonicalLora, LoraLayer  # noqa: E402
from autolora_worker.models import random_proving_ground  # noqa: E402


@pytest.fixture(scope="session")
def backbone():
    return random_proving_ground(seed=0)


def random_lora(model, modules: list[str], rank: int, seed: int, scale: float = 1.0, magnitude: float = 0.05,
                name: str = "") -> CanonicalLora:
    generator = torch.Generator().manual_seed(seed)
    layers = fused_layers(model)
    factors = {}
    for module in modules:
        layer = layers[module]
        factors[module] = LoraLayer(
            down=torch.randn(rank, layer.in_features, generator=generator) * magnitude,
            up=torch.randn(layer.out_features, rank, generator=generator) * magnitude,
            scale=scale,
        )
    return CanonicalLora(factors, name=name or f"random-{seed}", family="proving-ground", sha256=f"{seed:064x}")


def modules_matching(model, *fragments: str) -> list[str]:
    return [name for name in fused_layers(model) if any(fragment in name for fragment in fragments)]


def transformer_inputs(backbone, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    config = backbone.transformer.config
    tokens, text = 64, 8
    return dict(
        hidden_states=torch.randn(batch, tokens, config.in_channels, generator=generator),
        encoder_hidden_states=torch.randn(batch, text, config.joint_attention_dim, generator=generator),
        pooled_projections=torch.randn(batch, config.pooled_projection_dim, generator=generator),
        timestep=torch.full((batch,), 0.5),
        img_ids=backbone.image_ids(64, 64),
        txt_ids=torch.zeros(text, 3),
        guidance=torch.full((batch,), 1.0),
        return_dict=False,
    )
