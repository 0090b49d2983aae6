"""Flow-matching Euler sampling with FLUX's shifted schedule and guidance embedding, as a plain function."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .errors import JobCancelledError
from .families import FamilySpec
from .models import Backbone


def flux_sigmas(num_steps: int, image_tokens: int, spec: FamilySpec) -> torch.Tensor:
    """σ from 1 to 0 over `num_steps` Euler steps (num_steps + 1 values), shifted toward noise for larger images
    exactly as diffusers' FluxPipeline does (linear μ in the token count, σ' = e^μ / (e^μ + 1/σ − 1))."""
    slope = (spec.max_shift - spec.base_shift) / (spec.max_seq_len - spec.base_seq_len)
    mu = spec.base_shift + slope * (image_tokens - spec.base_seq_len)
    sigmas = np.linspace(1.0, 1.0 / num_steps, num_steps)
    shifted = math.exp(mu) / (math.exp(mu) + (1.0 / sigmas - 1.0))
    return torch.tensor(np.append(shifted, 0.0), dtype=torch.float32)


@dataclass
class SampleRequest:
    prompt: str
    seeds: list[int]
    steps: int
    guidance: float
    height: int
    width: int
    true_cfg: float = 1.0  # > 1: classifier-free guidance against the empty prompt (two passes per step)


StepCallback = Callable[[int, int, torch.Tensor], None]  # (step done, total, predicted clean latents)


@torch.no_grad()
def sample(backbone: Backbone, request: SampleRequest, *, on_step_start: Callable[[int, int], None] | None = None,
           on_step_end: StepCallback | None = None, should_cancel: Callable[[], bool] | None = None) -> np.ndarray:
    """Generate one image per seed in a single batch; returns (B, H, W, 3) uint8.

    Each seed's noise is its own (Backbone.noise) and nothing mixes the rows of a batch, so a seed's image does not
    depend on the batch it is drawn in, up to float rounding: the kernels a matmul picks, which change with the
    batch size, the thread count and the CPU, can move a pixel channel by a level (README, "What a seed promises",
    states the bounds; tests/conftest.py measures and checks them).

    `should_cancel` is polled between steps: cancellation costs at most one step. `on_step_start` lets a fusion
    session know the step (K-LoRA's schedule); `on_step_end` reports progress with the current x̂₀ estimate.
    """
    if request.steps < 1:
        raise ValueError(f"steps must be at least 1, got {request.steps}")
    if request.true_cfg < 1.0:
        raise ValueError(f"true_cfg must be at least 1, got {request.true_cfg}")
    batch = len(request.seeds)
    latents = backbone.noise(request.seeds, request.height, request.width)  # (B, N, C)
    image_ids = backbone.image_ids(request.height, request.width)  # (N, 3)
    guided = request.true_cfg != 1.0
    # With guidance the conditioned and the unconditioned halves go through the transformer together, as 2B rows.
    condition = backbone.encode_prompts([request.prompt, ""] if guided else [request.prompt]).repeat_each(batch)
    passes = 2 if guided else 1
    sigmas = flux_sigmas(request.steps, latents.shape[1], backbone.spec).to(backbone.device)
    guidance = torch.full((passes * batch,), request.guidance, device=backbone.device, dtype=backbone.dtype)
    transformer = backbone.transformer
    if not transformer.config.guidance_embeds:
        guidance = None  # schnell-style models have no guidance embedding
    for step in range(request.steps):
        if should_cancel is not None and should_cancel():
            raise JobCancelledError(f"cancelled before step {step + 1} of {request.steps}")
        if on_step_start is not None:
            on_step_start(step, request.steps)
        sigma, sigma_next = sigmas[step], sigmas[step + 1]
        velocity = transformer(
            hidden_states=latents.repeat(passes, 1, 1),
            encoder_hidden_states=condition.prompt_embeds,
            pooled_projections=condition.pooled,
            timestep=sigma.expand(passes * batch).to(backbone.dtype),
            img_ids=image_ids,
            txt_ids=condition.text_ids,
            guidance=guidance,
            return_dict=False,
        )[0]  # (passes·B, N, C): the flow from data to noise
        if guided:
            conditioned, unconditioned = velocity.chunk(2)
            velocity = unconditioned + request.true_cfg * (conditioned - unconditioned)
        if on_step_end is not None:
            on_step_end(step + 1, request.steps, latents - sigma * velocity)
        latents = latents + (sigma_next - sigma) * velocity
    return backbone.decode(latents, request.height, request.width)
