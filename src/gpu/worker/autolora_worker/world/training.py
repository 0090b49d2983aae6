"""The proving ground's trainers, plain functions: the autoencoder, and, taking the backbone, the base model, one
LoRA, the gates.

Each draws its data from a caller's sampler `draw(rng, batch) -> (images (B, 3, 64, 64) in [-1, 1], captions)`,
minimises the flow-matching loss (`flow.py`) and runs through `training_loop.run_loop`, so every one is
deterministic for a seed, checkpoints atomically and resumes bit-exactly (flow.py's CaptionCache says where not).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..autoencoder import AutoencoderConfig, ConvAutoencoder
from ..fusion import FusionOptions, FusionSession, GateBank, fused_layers
from ..fusion.layer import FusedLinear, LayerPlan
from ..lora.canonical import CanonicalLora, LoraLayer
from ..models import ProvingGroundBackbone
from .flow import CaptionCache, flow_loss, noised_batch
from ..training_loop import LoopSettings, Progress, StepLoss, StepRandom, run_loop

Draw = Callable[[np.random.Generator, int], tuple[torch.Tensor, list[str]]]
# rng, batch -> (target LoRA, interference LoRA, target images, target captions, interference captions)
DrawPair = Callable[[np.random.Generator, int],
                    tuple[CanonicalLora, CanonicalLora, torch.Tensor, list[str], list[str]]]
History = dict[str, list[float]]


DrawImages = Callable[[np.random.Generator, int], torch.Tensor]


def _detail_energy(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, H/4, W/4): the mean absolute deviation of each pixel from its 3×3 neighbourhood, per
    4×4 cell: how much fine texture (grain, dots, block edges) the cell holds, wherever exactly it lies. Absolute,
    not squared: a squared energy has no gradient where a decoder paints no detail at all, which is where it starts."""
    detail = images - F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    return F.avg_pool2d(detail.abs(), 4)


def train_autoencoder(config: AutoencoderConfig, draw: DrawImages, *, steps: int, batch: int, lr: float, seed: int,
                      latent_noise: float = 0.05, texture_weight: float = 0.0, checkpoint_dir: str | Path | None = None, resume: bool = False,
                      progress: Progress | None = print, log_every: int = 100, calibration: int = 256) -> tuple[ConvAutoencoder, History]:
    """Train a fresh autoencoder to reconstruct the sampler's images (L1 + MSE). A little Gaussian noise is added to
    each latent before decoding, so the decoder tolerates the small errors a denoiser leaves in what it draws, and
    a weak pull keeps the latents near unit scale. `texture_weight` adds a term that matches the high-frequency
    energy of each 4×4 cell (image minus its 3×3 local mean, absolute): L1/MSE alone teach a decoder to paint the
    mean of unpredictable detail such as film grain, i.e. none at all. Returns it frozen, with `config.scale` set to the standard
    deviation of its latents over `calibration` fresh images, so the transformer sees unit-scale tokens."""
    torch.manual_seed(seed)
    autoencoder = ConvAutoencoder(config)
    params = dict(autoencoder.named_parameters())

    def step_loss(step: int, random: StepRandom) -> dict[str, torch.Tensor]:
        images = draw(random.data, batch)
        latents = autoencoder.encode(images)  # (B, C, 16, 16)
        noisy = latents + latent_noise * torch.randn(latents.shape, generator=random.torch)
        reconstruction = autoencoder.decode(noisy)
        l1, mse = F.l1_loss(reconstruction, images), F.mse_loss(reconstruction, images)
        scale = (latents.pow(2).mean() - 1.0).abs()
        texture = F.l1_loss(_detail_energy(reconstruction), _detail_energy(images))
        return {"loss": l1 + mse + texture_weight * texture + 1e-3 * scale, "l1": l1, "mse": mse, "texture": texture}

    settings = LoopSettings(
        name="autoencoder", steps=steps, lr=lr, seed=seed, warmup=max(1, steps // 30), weight_decay=0.0, clip=1.0,
        checkpoint_dir=_path(checkpoint_dir), checkpoint_every=100, resume=resume, progress=progress,
        log_every=log_every, lr_floor=0.05, fingerprint={"batch": batch, "latent_noise": latent_noise, "texture_weight": texture_weight, **vars(config)})
    autoencoder.train()
    history = run_loop(params, step_loss, settings)
    autoencoder.eval().requires_grad_(False)
    with torch.no_grad():
        spread = float(autoencoder.encode(draw(np.random.default_rng([seed, 0x5CA1E]), calibration)).std())
    calibrated = ConvAutoencoder(replace(config, scale=round(spread, 4)))
    calibrated.load_state_dict(autoencoder.state_dict())
    return calibrated.eval().requires_grad_(False), history


def train_base(backbone: ProvingGroundBackbone, draw: Draw, *, steps: int, batch: int, lr: float, seed: int,
               checkpoint_dir: str | Path | None = None, resume: bool = False, progress: Progress | None = print,
               warmup: int | None = None, weight_decay: float = 0.01, clip: float = 1.0,
               checkpoint_every: int = 200, log_every: int = 50, captions: CaptionCache | None = None,
               caption_dropout: float = 0.0) -> History:
    """Train every transformer weight of the proving-ground model (the wrapped linears' own weights included).

    Each caption is replaced by the empty prompt with probability `caption_dropout`, which teaches the model the
    unconditioned velocity that classifier-free guidance (`FamilySpec.true_cfg`) samples against.
    The text encoder stays frozen. The model comes back frozen again, trained in place; returns the history.
    `warmup` defaults to 5% of the steps: the randomly initialised model's first gradients are its largest.
    """
    _check_trainable(backbone, "base")
    layers = fused_layers(backbone.transformer)
    _check_no_plans(layers, "base")
    params = dict(backbone.transformer.named_parameters())
    step_loss = _flow_matching(backbone, draw, batch, captions, "base", caption_dropout)
    settings = LoopSettings(
        name="base", steps=steps, lr=lr, seed=seed, warmup=steps // 20 if warmup is None else warmup,
        weight_decay=weight_decay, clip=clip, checkpoint_dir=_path(checkpoint_dir),
        checkpoint_every=checkpoint_every, resume=resume, progress=progress, log_every=log_every,
        fingerprint={"batch": batch, "caption_dropout": caption_dropout})
    backbone.transformer.requires_grad_(True)
    try:
        return run_loop(params, step_loss, settings)
    finally:
        backbone.transformer.requires_grad_(False)


class LoraTrainingPlan(LayerPlan):
    """A LoRA under training at one layer: base(x) + (α/r)·B(A x), with A and B parameters of their own, so the
    base weight is never touched. A starts as peft's default (Kaiming-uniform, bound 1/√in), B at zero, so the
    untrained LoRA is the base model exactly."""

    def __init__(self, layer: FusedLinear, rank: int, alpha: float, generator: torch.Generator):
        weight = layer.base.weight
        bound = 1.0 / math.sqrt(layer.in_features)
        down = (torch.rand(rank, layer.in_features, generator=generator) * 2.0 - 1.0) * bound
        self.down = nn.Parameter(down.to(weight.device, weight.dtype))  # (r, in)
        self.up = nn.Parameter(torch.zeros(layer.out_features, rank, device=weight.device, dtype=weight.dtype))
        self.scale = alpha / rank

    def forward(self, base, x):
        return base(x) + self.scale * F.linear(F.linear(x, self.down), self.up)

    def trained(self) -> LoraLayer:
        return LoraLayer(self.down.detach().float().cpu().clone(), self.up.detach().float().cpu().clone(), self.scale)


def train_lora(backbone: ProvingGroundBackbone, draw: Draw, *, modules: list[str], rank: int, alpha: float,
               steps: int, batch: int, lr: float, seed: int, checkpoint_dir: str | Path | None = None,
               resume: bool = False, progress: Progress | None = print, warmup: int | None = None,
               weight_decay: float = 0.0, clip: float = 1.0, checkpoint_every: int = 100, log_every: int = 50,
               captions: CaptionCache | None = None, history: History | None = None) -> dict[str, LoraLayer]:
    """A standard LoRA (ΔW = α/r · B A) on the named wrapped linears, trained with the base frozen.

    Returns the factors by module name as detached float32 CPU tensors with scale α/r. If `history` is given it is
    filled with the per-step losses. The model is left exactly as it came (no plan installed, weights unchanged).
    """
    _check_trainable(backbone, "lora")
    if rank < 1 or alpha <= 0:
        raise ValueError(f"lora: rank must be ≥ 1 and alpha > 0, got rank={rank} alpha={alpha}")
    layers = fused_layers(backbone.transformer)
    unknown = sorted(set(modules) - set(layers))
    if not modules or unknown:
        raise ValueError(f"lora: modules must be wrapped linears of the model; unknown: {unknown[:5]}"
                         if unknown else "lora: no modules to adapt")
    _check_no_plans(layers, "lora")
    names = sorted(set(modules))
    generator = torch.Generator().manual_seed(seed)
    plans = {name: LoraTrainingPlan(layers[name], rank, alpha, generator) for name in names}
    params = {f"{name}.{factor}": getattr(plan, factor) for name, plan in plans.items() for factor in ("down", "up")}
    step_loss = _flow_matching(backbone, draw, batch, captions, "lora")
    settings = LoopSettings(
        name="lora", steps=steps, lr=lr, seed=seed, warmup=steps // 20 if warmup is None else warmup,
        weight_decay=weight_decay, clip=clip, checkpoint_dir=_path(checkpoint_dir),
        checkpoint_every=checkpoint_every, resume=resume, progress=progress, log_every=log_every,
        fingerprint={"batch": batch, "modules": names, "rank": rank, "alpha": float(alpha)})
    for name, plan in plans.items():
        layers[name].plan = plan
    try:
        losses = run_loop(params, step_loss, settings)
    finally:
        for name in plans:
            layers[name].plan = None
    if history is not None:
        history.update(losses)
    return {name: plan.trained() for name, plan in plans.items()}


def train_gates(backbone: ProvingGroundBackbone, gates: GateBank, draw_pair: DrawPair, *, steps: int, batch: int,
                lr: float, seed: int, hinge: bool, hinge_margin: float = 0.5, caption_dropout: float = 0.0,
                global_lora: bool = True, global_rank: int = 4, checkpoint_dir: str | Path | None = None,
                resume: bool = False, progress: Progress | None = print, warmup: int | None = None,
                clip: float = 1.0, checkpoint_every: int = 100, log_every: int = 25,
                captions: CaptionCache | None = None) -> History:
    """Interference-resistant gate training (eq. 10): each step a target and an interfering LoRA are both active
    through the gated strategy (plus the Global LoRA of the two when `global_lora`), and the loss is flow matching
    on the target's images under the target's captions, each dropped to "" with probability `caption_dropout`.
    With `hinge`, the authors' extra term max(0, margin − MSE(target images | interference captions)) is added:
    the fused model must not produce the target's images when asked for the other concept.

    Only gate parameters train (no weight decay: it would pull w_o, the fusion scale, toward zero). The gates
    come back trained in place and frozen; returns the history (loss, mse and, with `hinge`, hinge).
    """
    _check_trainable(backbone, "gates")
    if not 0.0 <= caption_dropout < 1.0:
        raise ValueError(f"gates: caption_dropout must be in [0, 1), got {caption_dropout}")
    layers = fused_layers(backbone.transformer)
    _check_no_plans(layers, "gates")
    gates.to(backbone.device)
    params = {f"gates.{name}": param for name, param in gates.named_parameters()}
    options = FusionOptions(strategy="gated", global_lora=global_lora, global_rank=global_rank)
    captions = captions if captions is not None else CaptionCache.for_backbone(backbone)

    def step_loss(step: int, random: StepRandom) -> dict[str, torch.Tensor]:
        target, interference, images, texts, other_texts = draw_pair(random.data, batch)
        if images.shape[0] != batch or len(texts) != batch or len(other_texts) != batch:
            raise ValueError(f"gates: draw_pair returned {images.shape[0]} images, {len(texts)} captions and "
                             f"{len(other_texts)} interference captions for a batch of {batch}")
        dropped = torch.rand(batch, generator=random.torch) < caption_dropout
        texts = ["" if drop else text for text, drop in zip(texts, dropped.tolist())]
        noised = noised_batch(backbone, images, random.torch)
        with FusionSession(backbone.transformer, [target, interference], [1.0, 1.0], options, gates):
            mse = flow_loss(backbone, noised, captions(texts))
            if not hinge:
                return {"loss": mse, "mse": mse}
            # Same noised images, same σ: only the caption differs from the term above.
            hinge_term = F.relu(hinge_margin - flow_loss(backbone, noised, captions(other_texts)))
        return {"loss": mse + hinge_term, "mse": mse, "hinge": hinge_term}

    settings = LoopSettings(
        name="gates", steps=steps, lr=lr, seed=seed, warmup=steps // 20 if warmup is None else warmup,
        weight_decay=0.0, clip=clip, checkpoint_dir=_path(checkpoint_dir), checkpoint_every=checkpoint_every,
        resume=resume, progress=progress, log_every=log_every,
        fingerprint={"batch": batch, "hinge": hinge, "hinge_margin": hinge_margin, "caption_dropout": caption_dropout,
                     "global_lora": global_lora, "global_rank": global_rank})
    gates.requires_grad_(True)
    try:
        return run_loop(params, step_loss, settings)
    finally:
        gates.requires_grad_(False)


def _flow_matching(backbone: ProvingGroundBackbone, draw: Draw, batch: int, captions: CaptionCache | None,
                   name: str, caption_dropout: float = 0.0) -> StepLoss:
    """The base and LoRA trainers' step: a fresh batch from the sampler, flow matching under its captions, each
    dropped to the empty prompt with probability `caption_dropout`."""
    if not 0.0 <= caption_dropout < 1.0:
        raise ValueError(f"{name}: caption_dropout must be in [0, 1), got {caption_dropout}")
    captions = captions if captions is not None else CaptionCache.for_backbone(backbone)

    def step_loss(step: int, random: StepRandom) -> dict[str, torch.Tensor]:
        images, texts = draw(random.data, batch)
        if images.ndim != 4 or images.shape[0] != batch or len(texts) != batch:
            raise ValueError(f"{name}: the sampler returned images {tuple(images.shape)} and {len(texts)} captions "
                             f"for a batch of {batch}; expected ({batch}, 3, H, W) and {batch} captions")
        noised = noised_batch(backbone, images, random.torch)
        if caption_dropout > 0:
            dropped = torch.rand(batch, generator=random.torch) < caption_dropout
            texts = ["" if drop else text for drop, text in zip(dropped.tolist(), texts)]
        return {"loss": flow_loss(backbone, noised, captions(texts))}

    return step_loss


def _check_trainable(backbone: ProvingGroundBackbone, name: str) -> None:
    # AdamW on bf16 weights loses most small updates; the proving ground is small enough to train in fp32 anywhere.
    if backbone.dtype != torch.float32:
        raise ValueError(f"{name}: the world trainers need a float32 backbone, got {backbone.dtype}; load it with "
                         f"dtype=torch.float32")


def _check_no_plans(layers: dict[str, FusedLinear], name: str) -> None:
    busy = sorted(layer_name for layer_name, layer in layers.items() if layer.plan is not None)
    if busy:
        raise RuntimeError(f"{name}: {len(busy)} layers already have a fusion plan installed (e.g. {busy[:3]}); "
                           f"train outside any FusionSession")


def _path(folder: str | Path | None) -> Path | None:
    return Path(folder) if folder is not None else None
