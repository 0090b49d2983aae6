"""The model host: load a family's backbone from disk, wrap its linears for fusion, and expose the four things
sampling needs — text conditioning, seeded noise, decoding, and a cheap preview.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import FluxTransformer2DModel

from .autoencoder import ConvAutoencoder, LatentCodec, load_autoencoder, save_autoencoder
from .codec import PixelPatchCodec, patch_ids
from .errors import ModelLoadError
from .families import FamilySpec, get_family
from .fusion import wrap_linears
from .text import Conditioning, MiniLMTextEncoder


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (FLUX's native precision), fp32 on the CPU (bf16 matmuls are slow and lossy there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def to_uint8(images: torch.Tensor) -> np.ndarray:
    # (B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def _directory_version(path: Path) -> str:
    """A short content hash of a model directory's weight files: the `model_version` users and logs see."""
    digest = hashlib.sha256()
    for weights in sorted(path.rglob("*.safetensors")):
        digest.update(weights.relative_to(path).as_posix().encode())
        digest.update(str(weights.stat().st_size).encode())
        with weights.open("rb") as handle:
            digest.update(handle.read(1 << 20))  # first MiB: the header and leading tensors differ per model
    return digest.hexdigest()[:12]


class Backbone:
    spec: FamilySpec
    transformer: FluxTransformer2DModel
    device: torch.device
    dtype: torch.dtype
    version: str
    pixels_per_token: int

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        raise NotImplementedError

    def channels(self) -> int:
        return int(self.transformer.config.in_channels)

    def image_ids(self, height: int, width: int) -> torch.Tensor:
        self.check_size(height, width)
        return patch_ids(height // self.pixels_per_token, width // self.pixels_per_token, self.device, self.dtype)

    def noise(self, seeds: list[int], height: int, width: int) -> torch.Tensor:
        """(B, N, C) packed noise; each seed's noise is drawn alone on the CPU, so it is the same whatever the
        batch, its position in it, or the device."""
        self.check_size(height, width)
        tokens = (height // self.pixels_per_token) * (width // self.pixels_per_token)
        draws = [torch.randn(tokens, self.channels(), generator=torch.Generator().manual_seed(seed)) for seed in seeds]
        return torch.stack(draws).to(self.device, self.dtype)

    def decode(self, latents: torch.Tensor, height: int, width: int) -> np.ndarray:
        raise NotImplementedError

    def preview(self, latents: torch.Tensor, height: int, width: int) -> np.ndarray | None:
        return None

    def check_size(self, height: int, width: int) -> None:
        step = self.pixels_per_token
        if height <= 0 or width <= 0 or height % step or width % step:
            raise ValueError(f"height and width must be positive multiples of {step} for {self.spec.name}, "
                             f"got {height}x{width}")


class ProvingGroundBackbone(Backbone):
    """The tiny FLUX-shaped model. Its image codec is an autoencoder's latent (`autoencoder/` beside the
    transformer, as FLUX has its VAE), or, for models without one, pixel patches (codec.py)."""

    def __init__(self, transformer: FluxTransformer2DModel, device: torch.device, dtype: torch.dtype, version: str,
                 spec: FamilySpec | None = None, autoencoder: ConvAutoencoder | None = None):
        self.spec = spec or get_family("proving-ground")
        self.transformer = transformer.to(device, dtype).eval().requires_grad_(False)
        self.device, self.dtype, self.version = device, dtype, version
        self.codec = (LatentCodec(autoencoder).to(device, dtype) if autoencoder is not None
                      else PixelPatchCodec(self.spec.extra["patch"], self.spec.extra.get("downsample", 1)))
        if self.codec.channels() != transformer.config.in_channels:
            raise ModelLoadError(f"the transformer takes {transformer.config.in_channels} values per image token but its "
                                 f"codec makes {self.codec.channels()}")
        self.pixels_per_token = self.codec.pixels_per_token
        self.text_encoder = MiniLMTextEncoder(self.spec.extra["text_max_tokens"], device, dtype)
        wrap_linears(self.transformer)

    def encode_prompts(self, prompts):
        return self.text_encoder(prompts)

    def decode(self, latents, height, width):
        return to_uint8(self.codec.decode(latents, height, width))

    def preview(self, latents, height, width):
        return self.decode(latents, height, width)  # decoding is a reshape: the preview is the image itself


class FluxBackbone(Backbone):
    """FLUX.1 (dev or schnell) from a local diffusers-layout directory, through diffusers' FluxPipeline."""

    def __init__(self, path: Path, device: torch.device, dtype: torch.dtype, max_sequence_length: int | None = None):
        from diffusers import FluxPipeline

        from .tiny_flux import stand_in_settings

        try:
            settings = stand_in_settings(path)
        except ValueError as error:
            raise ModelLoadError(str(error)) from None
        if settings.get("family", "flux") != "flux":
            raise ModelLoadError(f"{path} declares family {settings['family']!r}, not flux")

        try:
            # A stand-in may ask for its transformer to be built from its config with seeded random weights.
            extra = {}
            if settings.get("random_init"):
                from .tiny_flux import random_transformer

                extra["transformer"] = random_transformer(path, device, dtype, int(settings.get("seed", 0)))
            self.pipeline = FluxPipeline.from_pretrained(str(path), dtype=dtype, local_files_only=True, **extra)
        except Exception as error:
            raise ModelLoadError(f"cannot load a FLUX pipeline from {path}: {error}") from error
        self.pipeline.to(device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.spec = get_family("flux")
        self.transformer = self.pipeline.transformer.eval().requires_grad_(False)
        self.device, self.dtype = device, dtype
        self.version = _directory_version(path)
        # FLUX.1-dev's pipeline runs T5 over 512 tokens; a stand-in says its own.
        self.max_sequence_length = max_sequence_length or int(settings.get("max_sequence_length", 512))
        self.stand_in = settings.get("stand_in")
        # 8x VAE compression times FLUX's 2x2 latent packing; read from the VAE so smaller VAEs work too.
        self.pixels_per_token = 2 * self.pipeline.vae_scale_factor
        wrap_linears(self.transformer)

    def encode_prompts(self, prompts):
        with torch.no_grad():
            embeds, pooled, text_ids = self.pipeline.encode_prompt(
                prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length)
        return Conditioning(embeds.to(self.dtype), pooled.to(self.dtype), text_ids.to(self.dtype))

    def channels(self):
        return int(self.transformer.config.in_channels)

    @torch.no_grad()
    def decode(self, latents, height, width):
        vae = self.pipeline.vae
        unpacked = self.pipeline._unpack_latents(latents, height, width, self.pipeline.vae_scale_factor)
        unpacked = unpacked / vae.config.scaling_factor + vae.config.shift_factor
        return to_uint8(vae.decode(unpacked.to(vae.dtype), return_dict=False)[0])


def meta_flux_transformer(config: dict | None = None) -> FluxTransformer2DModel:
    """diffusers' FLUX transformer of `config` (default FLUX.1's) on the meta device, its linears wrapped as a
    worker's: module names and shapes for gate banks and encoder tables, no memory."""
    with torch.device("meta"):
        model = FluxTransformer2DModel(**(config or get_family("flux").transformer))
    wrap_linears(model)
    return model


def random_flux_transformer(config: dict, device: torch.device, dtype: torch.dtype,
                            seed: int | None = None) -> FluxTransformer2DModel:
    """The transformer of `config` with random weights (from `seed`, when given, without touching the global
    generator), built directly on `device` in `dtype`: FLUX.1 in fp32 first would need 48 GB."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.random.fork_rng(devices=[] if device.type != "cuda" else [device]), torch.device(device):
            if seed is not None:
                torch.manual_seed(seed)
            return FluxTransformer2DModel.from_config(config)
    finally:
        torch.set_default_dtype(previous)


def load_backbone(family: str, path: str | Path | None, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None, seed: int = 0) -> Backbone:
    """Load `family` from `path`. The proving ground may have no path: a seeded random model then stands in,
    which is what tests and benchmarks want (issue [2/5] trains the real one)."""
    spec = get_family(family)
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    if spec.name == "flux":
        if path is None:
            raise ModelLoadError("the flux family needs --model-path: a local FLUX.1 directory in diffusers layout")
        return FluxBackbone(Path(path), device, dtype)
    if path is None:
        return random_proving_ground(device, dtype, seed)
    path = Path(path)
    transformer_dir = path / "transformer"
    if not transformer_dir.is_dir():
        raise ModelLoadError(f"{path} has no transformer/ folder (expected a proving-ground model directory)")
    try:
        transformer = FluxTransformer2DModel.from_pretrained(str(transformer_dir), local_files_only=True)
    except Exception as error:
        raise ModelLoadError(f"cannot load the proving-ground transformer from {transformer_dir}: {error}") from error
    manifest = path / "model.json"
    version = json.loads(manifest.read_text())["version"] if manifest.exists() else _directory_version(path)
    autoencoder = load_autoencoder(path / "autoencoder") if (path / "autoencoder").is_dir() else None
    return ProvingGroundBackbone(transformer, device, dtype, version, spec, autoencoder)


def random_proving_ground(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
                          autoencoder: ConvAutoencoder | None = None, **overrides) -> ProvingGroundBackbone:
    """A seeded, untrained proving-ground model: on pixel patches, or on `autoencoder`'s latent when given."""
    spec = get_family("proving-ground")
    if autoencoder is not None:
        overrides = {"in_channels": 4 * autoencoder.config.latent_channels, **overrides}
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**{**spec.transformer, **overrides})
    return ProvingGroundBackbone(transformer, torch.device(device), dtype, f"random-{seed}", spec, autoencoder)


def save_proving_ground(backbone: ProvingGroundBackbone, path: str | Path, version: str) -> None:
    """Write a proving-ground model directory that `load_backbone('proving-ground', path)` reads back."""
    path = Path(path)
    (path / "transformer").mkdir(parents=True, exist_ok=True)
    # Save the plain model: FusedLinear wrappers are a runtime detail and would rename every weight.
    clean = FluxTransformer2DModel.from_config(backbone.transformer.config)
    state = {name.replace(".base.", "."): tensor for name, tensor in backbone.transformer.state_dict().items()}
    clean.load_state_dict(state)
    clean.save_pretrained(str(path / "transformer"))
    if isinstance(backbone.codec, LatentCodec):
        save_autoencoder(backbone.codec.autoencoder, path / "autoencoder")
    (path / "model.json").write_text(json.dumps({"family": "proving-ground", "version": version}))
