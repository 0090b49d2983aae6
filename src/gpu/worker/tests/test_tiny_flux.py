"""The FLUX stand-in (`python -m autolora_worker tiny-flux`): a worker on it is a `flux` worker — it loads through
diffusers' FluxPipeline, generates, and reads FLUX.1-shaped LoRA files in every community format without an
encoder; only generation needs a LoRA to fit the loaded model."""

from __future__ import annotations

import json
import re
import threading

import pytest
import torch

from autolora_worker.__main__ import main
from autolora_worker.engine import Engine
from autolora_worker.lora.formats import FORMATS, write_lora_file
from autolora_worker.models import FluxBackbone, load_backbone
from autolora_worker.protocol import GenerateRequest, LoraRef
from autolora_worker.tiny_flux import write_tiny_flux

from test_lora_formats import XLABS_DOUBLE, block_modules, make_layers

# FLUX.1-dev's real widths (3072 wide, 12288 MLP) on a few modules of its first blocks: what a community file holds.
FLUX1_DOUBLE = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.0.proj")
FLUX1_SINGLE = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out")


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stand-in") / "tiny-flux"
    assert main(["tiny-flux", "--out", str(folder), "--seed", "3"]) == 0
    return folder


@pytest.fixture(scope="module")
def engine(stand_in):
    return Engine(load_backbone("flux", stand_in, "cpu"))


def run(engine: Engine, request: GenerateRequest) -> list[dict]:
    events: list[dict] = []
    engine.generate(request, events.append, threading.Event())
    return events


def test_the_stand_in_is_a_diffusers_flux_folder_that_says_what_it_is(stand_in, capsys):
    index = json.loads((stand_in / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline" and index["transformer"] == ["diffusers", "FluxTransformer2DModel"]
    assert json.loads((stand_in / "autolora.json").read_text())["family"] == "flux"
    backbone = load_backbone("flux", stand_in, "cpu")
    assert isinstance(backbone, FluxBackbone) and backbone.stand_in == "tiny-flux"
    assert backbone.pixels_per_token == 16  # FLUX.1's: an 8x VAE and 2x2 latent patches
    names = {name for name, _ in backbone.transformer.named_modules()}
    assert {"transformer_blocks.1.attn.to_q", "single_transformer_blocks.1.proj_mlp", "x_embedder"} <= names
    # A folder that already holds something is not overwritten.
    assert main(["tiny-flux", "--out", str(stand_in)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_it_generates_quickly_and_the_same_seed_gives_the_same_image(engine):
    request = GenerateRequest(prompt="a red hexagon", seeds=[1, 2], steps=2, height=64, width=64)
    events = run(engine, request)
    end = events[-1]
    assert end["type"] == "job-end", end
    again = run(engine, request)[-1]
    assert again["images"] == end["images"] and end["images"][0] != end["images"][1]


@pytest.mark.parametrize("file_format", FORMATS)
def test_flux1_lora_files_are_read_without_an_encoder_and_refused_only_by_generation(engine, tmp_path, file_format):
    # XLabs only reaches attention
    doubles, singles = (XLABS_DOUBLE[:4], FLUX1_SINGLE[:3]) if file_format == "xlabs" else (FLUX1_DOUBLE, FLUX1_SINGLE)
    layers = make_layers(block_modules(doubles, singles, num_double=1, num_single=1), family="flux", rank=4)
    path = tmp_path / f"flux1-{file_format}.safetensors"
    write_lora_file(layers, path, file_format)
    answer = engine.embed(str(path))
    assert (answer["family"], answer["format"], answer["embedding"]) == ("flux", file_format, None)
    assert answer["modules"] == len(layers) and "no LoRA encoder for flux" in answer["no_embedding"]
    end = run(engine, GenerateRequest(prompt="a star", steps=1, height=32, width=32, fusion="direct",
                                      loras=[LoraRef(path=str(path))]))[-1]
    assert end["type"] == "job-error" and end["code"] == "incompatible-lora", end
    assert re.search(r"layer \S+ is \d+x\d+ in the LoRA but \d+x\d+ in the model \(a LoRA for another model\?\)",
                     end["message"]), end["message"]


def test_a_random_init_stand_in_builds_its_transformer_from_the_config_with_seeded_weights(tmp_path):
    from autolora_worker.tiny_flux import write_tiny_flux

    written = write_tiny_flux(tmp_path / "random", seed=5, random_init=True)
    assert written["random_init"] and not list((tmp_path / "random" / "transformer").glob("*.safetensors"))
    first = load_backbone("flux", tmp_path / "random", "cpu")
    again = load_backbone("flux", tmp_path / "random", "cpu")
    weights = dict(first.transformer.named_parameters())
    assert all(torch.equal(tensor, weights[name]) for name, tensor in again.transformer.named_parameters())
    engine = Engine(first)
    assert run(engine, GenerateRequest(prompt="a star", steps=1, height=32, width=32))[-1]["type"] == "job-end"


def test_the_full_size_stand_in_declares_flux1s_transformer_without_weights(tmp_path):
    from autolora_worker.families import get_family
    from autolora_worker.tiny_flux import write_tiny_flux

    written = write_tiny_flux(tmp_path / "full", full_size=True)
    config = json.loads((tmp_path / "full" / "transformer" / "config.json").read_text())
    expected = get_family("flux").transformer
    assert {key: config[key] for key in ("num_layers", "num_single_layers", "joint_attention_dim")} == {
        key: expected[key] for key in ("num_layers", "num_single_layers", "joint_attention_dim")}
    assert written["random_init"] and written["bytes"] < 50_000_000  # the text encoders only: no 24 GB of weights


def test_full_size_flux_lora_files_are_flux1s_size_and_read_as_flux(engine, tmp_path):
    from autolora_worker.synthetic_flux_loras import write_full_size_flux_loras

    written = write_full_size_flux_loras(tmp_path / "loras", count=1, seed=3)
    record = json.loads((tmp_path / "loras" / "manifest.json").read_text())["loras"][0]
    assert (written["loras"], record["rank"], record["layers"]) == (1, 16, "attention")
    assert 40e6 < record["bytes"] < 60e6  # every block's attention at rank 16 in bf16: ~52 MB
    answer = engine.embed_many([str(tmp_path / "loras" / record["file"])])[0]
    assert (answer["family"], answer["modules"], answer["ranks"]) == ("flux", record["modules"], [16])
    with pytest.raises(ValueError, match="not empty"):
        write_full_size_flux_loras(tmp_path / "loras", count=1)
