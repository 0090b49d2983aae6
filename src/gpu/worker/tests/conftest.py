"""Shared fixtures: tiny real models (never mocks) and LoRAs with random factors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The test models are tiny: one thread is faster than two fighting the other test runner for 2 cores. An explicit
# OMP_NUM_THREADS wins, so the suite can be run at another thread count to show nothing depends on it.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))

from autolora_worker.fusion import fused_layers  # noqa: E402
from autolora_worker.lora.canonical import CanonicalLora, LoraLayer  # noqa: E402
from autolora_worker.models import random_proving_ground  # noqa: E402

# What a seed promises (README, "What a seed promises"): the same seed gives the same image, within these bounds,
# whatever the batch it is drawn in, the thread count or the CPU. Measured on the proving ground (bundle model, 20
# steps with true CFG 4, and the random model; fusion none, direct and gated; batches of 1, 2, 4 and 8; 1 and 2
# threads; AVX-512, AVX2 and unvectorised kernels through ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS and
# ONEDNN_MAX_CPU_ISA): the float images differ by at most 6e-4 of a level before rounding, so a channel value
# changes only where it lies that close to a rounding boundary, by 1 level, in at most 5 of an image's 12 288 values
# (a mean of 0.0004 levels; 3 in 100 000 over all images). The bounds leave room for kernels we did not meet: more
# than 2 levels needs a float drift over 2 levels, 3 000 times the measured one, and a mean of 0.01 is one value in
# 100 off by one, 25 times the worst image — still nothing an eye can see, and far below what another seed changes
# (17 to 93 levels on average).
SAME_SEED_MAX_LEVELS = 2
SAME_SEED_MEAN_LEVELS = 0.01


def assert_same_seed_image(image: np.ndarray, other: np.ndarray, what: str = "") -> None:
    """Two uint8 images of one seed agree within the promise above."""
    assert image.shape == other.shape, what
    difference = np.abs(image.astype(np.int16) - other.astype(np.int16))
    assert difference.max() <= SAME_SEED_MAX_LEVELS, f"{what}: a channel differs by {difference.max()} levels"
    assert difference.mean() <= SAME_SEED_MEAN_LEVELS, \
        f"{what}: channels differ by {difference.mean():.4f} levels on average"


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
