"""The proving ground's autoencoder, in the role FLUX's VAE plays: 64×64 RGB images ↔ 16×16×C latents, which the
transformer denoises in 2×2 patches (64 tokens of 4·C values), exactly as FLUX packs its latents.

Why a latent at all: a transformer that must place every pixel of a texture draws ragged blobs at this size; one
that places latents lets the decoder draw the edges, stripes and checks (../shared/notes/world-experiments.md:
stripes recognised 0.83 of the time in latent space vs 0.27 in pixel patches at equal budget).
Plain convolutions and residual blocks, no attention or normalisation: fast enough to train on two CPU cores.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ModelLoadError

WEIGHTS_FILE, CONFIG_FILE = "autoencoder.safetensors", "autoencoder.json"
FORMAT = "autolora-autoencoder"


@dataclass(frozen=True)
class AutoencoderConfig:
    latent_channels: int = 8
    width: int = 32
    residual_blocks: int = 1  # per resolution
    # Divides the encoder's output so the transformer sees latents of about unit scale (measured after training).
    scale: float = 1.0


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.first = nn.Conv2d(channels, channels, 3, padding=1)
        self.second = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.second(F.silu(self.first(F.silu(x))))


class ConvAutoencoder(nn.Module):
    """Two stride-2 downsamplings (64 → 16) and two nearest-neighbour upsamplings back, `width` channels at full
    and half resolution, twice that at a quarter."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        w, c, r = config.width, config.latent_channels, config.residual_blocks
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), *[_Residual(w) for _ in range(r)],  # (B, w, 64, 64)
            nn.Conv2d(w, w, 4, 2, 1), nn.SiLU(), *[_Residual(w) for _ in range(r)],  # (B, w, 32, 32)
            nn.Conv2d(w, 2 * w, 4, 2, 1), *[_Residual(2 * w) for _ in range(r)], nn.SiLU(),  # (B, 2w, 16, 16)
            nn.Conv2d(2 * w, c, 1),  # (B, C, 16, 16)
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(c, 2 * w, 3, padding=1), *[_Residual(2 * w) for _ in range(r)],  # (B, 2w, 16, 16)
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * w, w, 3, padding=1),
            *[_Residual(w) for _ in range(r)],  # (B, w, 32, 32)
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, w, 3, padding=1),
            *[_Residual(w) for _ in range(r)], nn.SiLU(),  # (B, w, 64, 64)
            nn.Conv2d(w, 3, 3, padding=1),  # (B, 3, 64, 64)
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)  # (B, 3, H, W) in [-1, 1] -> (B, C, H/4, W/4), unscaled

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents)  # (B, C, H/4, W/4) -> (B, 3, H, W)


class LatentCodec:
    """Images ↔ FLUX-packed latent tokens through a frozen autoencoder: `encode` (B, 3, H, W) → (B, N, 4·C) with
    N = (H/8)·(W/8), `decode` back. The same interface as codec.PixelPatchCodec."""

    def __init__(self, autoencoder: ConvAutoencoder):
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.latent_channels = autoencoder.config.latent_channels
        self.scale = autoencoder.config.scale

    @property
    def pixels_per_token(self) -> int:
        return 8  # 4 pixels per latent cell, 2×2 cells per token

    def channels(self) -> int:
        return 4 * self.latent_channels

    def to(self, device: torch.device, dtype: torch.dtype) -> "LatentCodec":
        # The autoencoder stays in fp32: it is tiny, and bf16 convolutions would blur what it decodes.
        self.autoencoder.to(device, torch.float32)
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        z = self.autoencoder.encode(images.float()) / self.scale  # (B, C, h, w)
        b, c, h, w = z.shape
        tokens = z.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)  # (B, h/2, w/2, C, 2, 2)
        return tokens.reshape(b, (h // 2) * (w // 2), c * 4).to(images.dtype)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, c = tokens.shape[0], self.latent_channels
        h, w = height // 4, width // 4
        z = tokens.float().reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        return self.autoencoder.decode(z * self.scale)


def save_autoencoder(autoencoder: ConvAutoencoder, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in autoencoder.state_dict().items()},
              str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, **asdict(autoencoder.config)}, indent=1))


def load_autoencoder(folder: str | Path) -> ConvAutoencoder:
    folder = Path(folder)
    try:
        record = json.loads((folder / CONFIG_FILE).read_text())
        if record.pop("format", None) != FORMAT:
            raise ValueError(f"{folder / CONFIG_FILE} is not an {FORMAT} config")
        autoencoder = ConvAutoencoder(AutoencoderConfig(**record))
        autoencoder.load_state_dict({name: tensor.float() for name, tensor in load_file(str(folder / WEIGHTS_FILE)).items()})
    except (OSError, ValueError, TypeError, RuntimeError) as error:
        message = " ".join(str(error).split())
        raise ModelLoadError(f"cannot load the autoencoder from {folder}: {message}") from error
    return autoencoder.eval()
