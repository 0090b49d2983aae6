"""The proving ground's image codec: pixel patches instead of a VAE, packed exactly like FLUX latents.

With `downsample` > 1 the codec also plays the VAE's other role, compression: images are area-averaged by that
factor before patching and decoded with a bilinear upsample. The proving ground uses 64x64 images at half
resolution in 4x4 patches: 64 tokens of 48 values. (Full-resolution 8x8 patches would be 192 values per token,
more than the model's stream (then 128 wide) could carry: the model could not even represent the noise it must remove,
and its samples stayed grainy.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_ids(rows: int, cols: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """FLUX image positions (rows·cols, 3): [0, row, col] per token, as diffusers' FluxPipeline builds them."""
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device=device, dtype=dtype)


class PixelPatchCodec:
    def __init__(self, patch: int, downsample: int = 1):
        self.patch = patch
        self.downsample = downsample

    @property
    def pixels_per_token(self) -> int:
        return self.patch * self.downsample

    def channels(self) -> int:
        return 3 * self.patch * self.patch

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        # images (B, 3, H, W) in [-1, 1] -> tokens (B, H/s · W/s, 3·p·p), s = p · downsample
        b, c, h, w = images.shape
        if h % self.pixels_per_token or w % self.pixels_per_token:
            raise ValueError(f"image size {h}x{w} is not a multiple of {self.pixels_per_token} pixels per token")
        if self.downsample > 1:
            images = F.avg_pool2d(images, self.downsample)
            h, w = h // self.downsample, w // self.downsample
        p = self.patch
        patches = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
        return patches.reshape(b, (h // p) * (w // p), c * p * p)

    def decode(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        # tokens (B, N, 3·p·p) -> images (B, 3, height, width)
        b = tokens.shape[0]
        p = self.patch
        h, w = height // self.downsample, width // self.downsample
        patches = tokens.reshape(b, h // p, w // p, 3, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, h, p, w, p)
        images = patches.reshape(b, 3, h, w)
        if self.downsample > 1:
            images = F.interpolate(images.float(), size=(height, width), mode="bilinear", align_corners=False)
        return images
