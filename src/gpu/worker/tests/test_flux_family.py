"""The `flux` family's real loading path (diffusers FluxPipeline, local_files_only) on the tiny random FLUX
stand-in (tiny_flux.py): tiny transformer, CLIP and T5 encoders with their tokenizers, tiny VAE."""

from __future__ import annotations

import pytest
import torch

from autolora_worker.errors import ModelLoadError
from autolora_worker.fusion import FusionOptions, FusionSession
from autolora_worker.models import FluxBackbone, load_backbone
from autolora_worker.sampling import SampleRequest, sample
from autolora_worker.tiny_flux import write_tiny_flux

from conftest import assert_same_seed_image, modules_matching, random_lora


@pytest.fixture(scope="module")
def tiny_flux_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-flux")
    write_tiny_flux(root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def flux(tiny_flux_dir):
    return load_backbone("flux", tiny_flux_dir, "cpu")


def test_loads_from_a_local_diffusers_directory_in_fp32_on_the_cpu(flux):
    assert isinstance(flux, FluxBackbone)
    assert flux.dtype == torch.float32
    assert flux.pixels_per_token == 16  # an 8x VAE times FLUX's 2x2 packing, as FLUX.1
    assert flux.max_sequence_length == 32  # the stand-in's own (autolora.json); FLUX.1 uses 512
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
