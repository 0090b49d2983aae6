"""The one form every LoRA takes inside the worker, whatever file format it arrived in."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class LoraLayer:
    """One adapted linear: ΔW = scale · up @ down.

    `down` is A (rank, in_features), `up` is B (out_features, rank); `scale` is alpha / rank (and any other
    multiplier a format stores), kept apart from the factors so the factors stay exactly as trained.
    """

    down: torch.Tensor
    up: torch.Tensor
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.down.ndim != 2 or self.up.ndim != 2:
            raise ValueError(f"LoRA factors must be 2-D, got down {tuple(self.down.shape)} up {tuple(self.up.shape)}")
        if self.up.shape[1] != self.down.shape[0]:
            raise ValueError(f"rank mismatch: up {tuple(self.up.shape)} vs down {tuple(self.down.shape)}")

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.down.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    def delta(self) -> torch.Tensor:
        """The dense update ΔW (out, in) in fp32; only for tests, DARE and K-LoRA statistics."""
        return self.scale * (self.up.float() @ self.down.float())

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "LoraLayer":
        return LoraLayer(self.down.to(device=device, dtype=dtype), self.up.to(device=device, dtype=dtype), self.scale)


@dataclass
class CanonicalLora:
    """A whole LoRA keyed by the transformer's own module names (e.g. `transformer_blocks.0.attn.to_q`)."""

    layers: dict[str, LoraLayer]
    format: str = "diffusers"
    family: str | None = None
    unknown_keys: list[str] = field(default_factory=list)
    sha256: str = ""
    name: str = ""

    @property
    def ranks(self) -> dict[str, int]:
        return {module: layer.rank for module, layer in self.layers.items()}

    def nbytes(self) -> int:
        return sum(l.down.numel() * l.down.element_size() + l.up.numel() * l.up.element_size() for l in self.layers.values())

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "CanonicalLora":
        return CanonicalLora(
            {m: l.to(device, dtype) for m, l in self.layers.items()},
            self.format, self.family, list(self.unknown_keys), self.sha256, self.name,
        )
