"""The proving ground's image codec: pixel patches instead of a VAE, packed exactly like FLUX latents."""

from __future__ import annotations

import torch


def patch_ids(rows: int, cols: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """FLUX image positions (rows·cols, 3): [0, row, col] per token, as diffusers' FluxPipeline builds them."""
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device=device, dtype=dtype)


class PixelPatchCodec:
    def __init__(self, patch: int):
        self.patch = patch

    def channels(self) -> int:
        return 3 * self.patch * self.patch

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        # images (B, 3, H, W) in [-1, 1] -> tokens (B, H/p · W/p, 3·p·p)
        b, c, h, w = images.shape
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        patches = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
        return patches.reshape(b, (h // p) * (w // p), c * p * p)

    def decode(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        # tokens (B, N, 3·p·p) -> images (B, 3, H, W)
        b = tokens.shape[0]
        p = self.patch
        patches = tokens.reshape(b, height // p, width // p, 3, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, h, p, w, p)
        return patches.reshape(b, 3, height, width)
