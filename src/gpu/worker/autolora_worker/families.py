"""Named registry of model families: every FLUX-shaped model the worker can host, as plain configs.

Both families build diffusers' `FluxTransformer2DModel`, so module names, LoRA keys and fusion code are shared;
they differ in size, text conditioning and the image codec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FamilySpec:
    name: str
    # Keyword arguments of FluxTransformer2DModel; for `flux` these are FLUX.1's, read from disk at load time.
    transformer: dict[str, Any]
    # Image tokens are 2x2 latent patches for FLUX (VAE factor 8 → 16 px per token) and pixel patches here.
    pixels_per_token: int
    default_size: int
    default_steps: int
    default_guidance: float
    # Real classifier-free guidance: a second, unconditioned pass per step and v = v_u + s·(v_c − v_u). FLUX.1-dev
    # has its guidance distilled into the guidance embedding instead, so 1.0 (one pass) there.
    true_cfg: float = 1.0
    # FLUX's resolution-dependent timestep shift (diffusers' FluxPipeline `calculate_shift`).
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_seq_len: int = 256
    max_seq_len: int = 4096
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def inner_dim(self) -> int:
        return int(self.transformer["num_attention_heads"] * self.transformer["attention_head_dim"])


FLUX_DEV = FamilySpec(
    name="flux",
    transformer=dict(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    ),
    pixels_per_token=16,
    default_size=1024,
    default_steps=28,
    default_guidance=3.5,
)

# The proving ground: 64x64 RGB images at half resolution in 4x4 pixel patches (64 image tokens of 48 values; see
# codec.py for why not 8x8 at full resolution), conditioned by all-MiniLM-L6-v2 (384-wide token states and a
# 384-wide pooled sentence vector). Small enough to train on 2 CPU cores, big enough to learn a dozen shapes and
# styles (issue [2/5]). 192 wide in 2 double + 2 single blocks: 128 wide in 2 + 4 drew blobs (0 of 24 base-shape
# samples recognised after 2500 steps); at equal steps the 192-wide model denoised better mid-schedule (x̂₁ RMSE at
# σ = 0.6 0.130 vs 0.137) and drew 23% of its shapes recognisably vs 8%, for ~1.3x the step time.
# Real classifier-free guidance (true_cfg) lifted shape accuracy from ~0 to 0.1-0.2 in 800-step trials.
PROVING_GROUND = FamilySpec(
    name="proving-ground",
    transformer=dict(
        patch_size=1, in_channels=4 * 4 * 3, num_layers=2, num_single_layers=2, attention_head_dim=32,
        num_attention_heads=6, joint_attention_dim=384, pooled_projection_dim=384, guidance_embeds=True,
        axes_dims_rope=(8, 12, 12),
    ),
    pixels_per_token=8,
    default_size=64,
    default_steps=20,
    default_guidance=1.0,
    true_cfg=4.0,
    # 64 image tokens is far below FLUX's 256-token base; a fixed shift keeps the schedule sensible.
    base_seq_len=64,
    max_seq_len=4096,
    extra=dict(patch=4, downsample=2, text_max_tokens=32),
)

FAMILIES: dict[str, FamilySpec] = {spec.name: spec for spec in (FLUX_DEV, PROVING_GROUND)}


def get_family(name: str) -> FamilySpec:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(sorted(FAMILIES))}") from None


def family_for_inner_dim(inner_dim: int) -> str | None:
    """The family whose hidden width matches, used to tell which model a LoRA file was trained for."""
    for spec in FAMILIES.values():
        if spec.inner_dim == inner_dim:
            return spec.name
    return None
