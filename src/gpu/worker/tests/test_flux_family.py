"""The `flux` family's real loading path (diffusers FluxPipeline, local_files_only) on a tiny random pipeline
that the test writes to disk itself: tiny transformer, CLIP and T5 encoders with their tokenizers, tiny VAE."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

from autolora_worker.errors import ModelLoadError
from autolora_worker.fusion import FusionOptions, FusionSession
from autolora_worker.models import FluxBackbone, load_backbone
from autolora_worker.sampling import SampleRequest, sample

from conftest import assert_same_seed_image, modules_matching, random_lora


def clip_tokenizer(folder) -> CLIPTokenizer:
    """A byte-level BPE vocabulary with no merges: every byte is a token, as CLIP's tokenizer expects."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codepoints = printable + [256 + i for i in range(256 - len(printable))]
    symbols = [chr(c) for c in codepoints]
    vocab = {token: i for i, token in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def t5_tokenizer() -> T5TokenizerFast:
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)] + [(c, -2.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0)


@pytest.fixture(scope="module")
def tiny_flux_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-flux")
    torch.manual_seed(0)
    clip = clip_tokenizer(root / "clip-vocab")
    pipeline = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                          latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                          shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=CLIPTextModel(CLIPTextConfig(
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(clip),
            bos_token_id=len(clip) - 2, eos_token_id=len(clip) - 1, pad_token_id=len(clip) - 1,
            max_position_embeddings=16, projection_dim=32)),
        tokenizer=clip,
        text_encoder_2=T5EncoderModel(T5Config(d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                               vocab_size=32, decoder_start_token_id=0)),
        tokenizer_2=t5_tokenizer(),
        transformer=FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                           pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
    )
    pipeline.save_pretrained(str(root / "model"))
    return root / "model"


@pytest.fixture(scope="module")
def flux(tiny_flux_dir):
    backbone = load_backbone("flux", tiny_flux_dir, "cpu")
    backbone.max_sequence_length = 16  # the tiny T5 vocabulary; FLUX.1 uses 512
    return backbone


def test_loads_from_a_local_diffusers_directory_in_fp32_on_the_cpu(flux):
    assert isinstance(flux, FluxBackbone)
    assert flux.dtype == torch.float32
    assert flux.pixels_per_token == 2  # a one-level VAE (no downsampling) times FLUX's 2x2 packing
    assert len(flux.version) == 12


def test_samples_a_batch_of_seeds_reproducibly(flux):
    request = SampleRequest("a red hexagon", seeds=[1, 2], steps=2, guidance=3.5, height=32, width=32)
    first = sample(flux, request)
    assert first.shape == (2, 32, 32, 3)
    again = sample(flux, request)
    for seed in range(2):
        assert_same_seed_image(first[seed], again[seed], "the same request twice")
    assert not (first[0] == first[1]).all()


def test_fuses_loras_on_the_same_module_names(flux):
    model = flux.transformer
    lora = random_lora(model, modules_matching(model, "attn.to_", "proj_mlp"), rank=4, seed=1, magnitude=0.5)
    request = SampleRequest("a red hexagon", seeds=[3], steps=2, guidance=3.5, height=32, width=32)
    base = sample(flux, request)
    with FusionSession(model, [lora], [1.0], FusionOptions("direct")):
        fused = sample(flux, request)
    assert not (fused == base).all()
    assert_same_seed_image(sample(flux, request)[0], base[0], "the base model after the session")


def test_a_missing_or_broken_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="needs --model-path"):
        load_backbone("flux", None)
    with pytest.raises(ModelLoadError, match="cannot load a FLUX pipeline"):
        load_backbone("flux", tmp_path)
