"""A FLUX stand-in anyone can start: a diffusers-format FLUX folder with FLUX.1's module names at tiny widths.

`python -m autolora_worker tiny-flux --out DIR` writes what a FLUX.1-dev download holds — model_index.json, a
FluxTransformer2DModel, CLIP and T5 text encoders with their tokenizers, a VAE and the flow-matching scheduler —
with random weights small enough to run on a laptop CPU. A worker started on it is a `flux` worker in every way the
host can see: it loads through diffusers' FluxPipeline (the real loading path), generates (noise-like images, in
seconds), and reads and ingests FLUX.1-shaped LoRA files, since ingest needs a LoRA's family and text, not that
its tensors fit the loaded model. Generation does need that: a FLUX.1 LoRA fails that one request with a message
naming the layer whose shape differs.

`autolora.json` beside model_index.json says that the folder is a stand-in and how long its prompts may be.

`--full-size` writes FLUX.1's own transformer config instead, with no weights (`random_init` in autolora.json):
a worker builds that 12B-parameter transformer with seeded random weights straight on its device in bf16, so a GPU
check can time the real model's shapes without a 24 GB download. Its text encoders keep FLUX.1's output widths
(CLIP 768, T5 4096) at one narrow layer each.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

STAND_IN_FILE = "autolora.json"
# The tiny T5 runs 32 tokens; FLUX.1-dev's pipeline runs 512.
MAX_SEQUENCE_LENGTH = 32
# FLUX.1's block layout at a tiny width: two double-stream and two single-stream blocks, 2 heads of 16.
TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
                   num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                   axes_dims_rope=(4, 6, 6))


def _clip_tokenizer(folder: Path):
    """CLIP's byte-level BPE with no merges: every byte is a token (no vocabulary download needed)."""
    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codepoints = printable + [256 + i for i in range(256 - len(printable))]
    symbols = [chr(c) for c in codepoints]
    vocab = {token: i for i, token in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def _t5_tokenizer():
    """A unigram vocabulary of the lower-case letters, with T5's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)] + [(c, -2.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=MAX_SEQUENCE_LENGTH)


def build_tiny_flux(seed: int = 0, text_widths: tuple[int, int] = (32, 32)):
    """The stand-in as an in-memory FluxPipeline (random weights from `seed`); `text_widths` are the CLIP and T5
    hidden sizes (FLUX.1's pooled and joint attention widths are 768 and 4096)."""
    import tempfile

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_width, t5_width = text_widths
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        clip = _clip_tokenizer(Path(scratch) / "clip")
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                  base_image_seq_len=256, max_image_seq_len=4096),
        # FLUX.1's VAE shape at a tiny width: 8x down-sampling (so 16 px per image token, as FLUX.1), 16 latent channels.
        vae=AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                          up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                          layers_per_block=1, latent_channels=16, norm_num_groups=4, use_quant_conv=False,
                          use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=CLIPTextModel(CLIPTextConfig(
            hidden_size=clip_width, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(clip),
            bos_token_id=len(clip) - 2, eos_token_id=len(clip) - 1, pad_token_id=len(clip) - 1,
            max_position_embeddings=77, projection_dim=clip_width)),
        tokenizer=clip,
        text_encoder_2=T5EncoderModel(T5Config(d_model=t5_width, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                               vocab_size=32, decoder_start_token_id=0)),
        tokenizer_2=_t5_tokenizer(),
        transformer=FluxTransformer2DModel(**{**TRANSFORMER, "joint_attention_dim": t5_width,
                                              "pooled_projection_dim": clip_width}),
    )


def write_tiny_flux(out: str | Path, seed: int = 0, full_size: bool = False, random_init: bool = False) -> dict:
    """Write the stand-in to `out` (created; refused if it exists and is not empty). Returns what was written.

    `full_size`: FLUX.1's transformer config and no transformer weights (implies `random_init`). `random_init`:
    the worker builds the transformer from its config with seeded random weights instead of loading them."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; give a new folder")
    random_init = random_init or full_size
    pipeline = build_tiny_flux(seed, text_widths=(768, 4096) if full_size else (32, 32))
    pipeline.save_pretrained(str(out))
    transformer = dict(TRANSFORMER)
    if full_size:
        from .families import get_family

        transformer = dict(get_family("flux").transformer)
        config = json.loads((out / "transformer" / "config.json").read_text())
        config.update({**transformer, "axes_dims_rope": list(transformer["axes_dims_rope"])})
        (out / "transformer" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if random_init:
        for weights in (out / "transformer").glob("*.safetensors*"):
            weights.unlink()
    about = {"family": "flux", "stand_in": "tiny-flux-full-size" if full_size else "tiny-flux", "seed": seed,
             "max_sequence_length": 512 if full_size else MAX_SEQUENCE_LENGTH, "transformer": transformer,
             **({"random_init": True} if random_init else {})}
    (out / STAND_IN_FILE).write_text(json.dumps(about, indent=2) + "\n")
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    return {"out": str(out), "family": "flux", "seed": seed, "bytes": size, "random_init": random_init,
            "transformer": {key: transformer[key] for key in ("num_layers", "num_single_layers", "num_attention_heads",
                                                              "attention_head_dim")}}


def random_transformer(path: Path, device: torch.device, dtype: torch.dtype, seed: int):
    """The transformer of `path/transformer/config.json` with seeded random weights, on `device` in `dtype`."""
    from diffusers import FluxTransformer2DModel

    from .models import random_flux_transformer

    return random_flux_transformer(FluxTransformer2DModel.load_config(str(path / "transformer")), device, dtype, seed)


def stand_in_settings(folder: Path) -> dict:
    """What a stand-in folder's autolora.json says (empty for a real FLUX download)."""
    path = folder / STAND_IN_FILE
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not readable JSON: {error}") from None


def tiny_flux_command(out: str, seed: int, full_size: bool = False) -> int:
    import sys

    try:
        print(json.dumps(write_tiny_flux(out, seed, full_size=full_size)))
    except (FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
