"""LoRA files: every format we write reads back to the same ΔW; malformed and foreign files fail in one line."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import safetensors.torch
import torch

from autolora_worker.errors import InvalidLoraFileError
from autolora_worker.families import get_family
from autolora_worker.lora.canonical import LoraLayer
from autolora_worker.lora.cli import inspect_command
from autolora_worker.lora.formats import read_lora_bytes, read_lora_file, write_lora_file
from autolora_worker.lora.keys import linear_shapes

DOUBLE_MODULES = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
    "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear",
    "norm1_context.linear",
)
SINGLE_MODULES = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out", "norm.linear")
XLABS_DOUBLE = DOUBLE_MODULES[:8]
XLABS_SINGLE = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_out")
PROVING_GROUND = get_family("proving-ground")
WIDTH = PROVING_GROUND.inner_dim
NUM_DOUBLE, NUM_SINGLE = PROVING_GROUND.transformer["num_layers"], PROVING_GROUND.transformer["num_single_layers"]


def make_layers(
    modules: list[str], family: str = "proving-ground", rank: int | dict[str, int] = 4, seed: int = 0
) -> dict[str, LoraLayer]:
    """Random factors of the family's real shapes; scales vary (one fused group gets mixed scales) to test alpha."""
    generator = torch.Generator().manual_seed(seed)
    shapes = linear_shapes(family)
    layers = {}
    for index, module in enumerate(modules):
        inputs, outputs = shapes[module]
        r = rank if isinstance(rank, int) else rank[module]
        scale = 2.0 if module == "transformer_blocks.0.attn.to_k" else (1.0 if index % 5 == 0 else 0.5)
        down = torch.randn(r, inputs, generator=generator) * 0.1
        up = torch.randn(outputs, r, generator=generator) * 0.1
        layers[module] = LoraLayer(down, up, scale)
    return layers


def block_modules(
    doubles: tuple[str, ...], singles: tuple[str, ...], num_double: int = NUM_DOUBLE, num_single: int = NUM_SINGLE
) -> list[str]:
    return [f"transformer_blocks.{i}.{m}" for i in range(num_double) for m in doubles] + [
        f"single_transformer_blocks.{i}.{m}" for i in range(num_single) for m in singles
    ]


def assert_same_deltas(read: dict[str, LoraLayer], original: dict[str, LoraLayer]) -> None:
    assert set(read) == set(original)  # nothing lost, no zero layers invented for pieces of fused tensors
    for module, layer in original.items():
        assert read[module].rank == layer.rank, module
        torch.testing.assert_close(read[module].delta(), layer.delta(), atol=1e-5, rtol=0, msg=module)


def saved(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    "file_format, doubles, singles",
    [
        ("diffusers", DOUBLE_MODULES, SINGLE_MODULES),
        ("kohya", DOUBLE_MODULES, SINGLE_MODULES),
        ("comfyui", DOUBLE_MODULES, SINGLE_MODULES),
        ("bfl", DOUBLE_MODULES, SINGLE_MODULES),
        ("xlabs", XLABS_DOUBLE, XLABS_SINGLE),  # XLabs only reaches attention
    ],
)
def test_every_format_round_trips_the_proving_ground_lora(tmp_path, file_format, doubles, singles):
    original = make_layers(block_modules(doubles, singles))
    path = tmp_path / f"lora-{file_format}.safetensors"
    write_lora_file(original, path, file_format)
    lora = read_lora_file(path)
    assert (lora.format, lora.family, lora.unknown_keys) == (file_format, "proving-ground", [])
    assert lora.name == path.name and len(lora.sha256) == 64
    assert_same_deltas(lora.layers, original)


def test_flux1_sized_kohya_lora_converts_without_padding(tmp_path):
    modules = [f"transformer_blocks.0.attn.{m}" for m in ("to_q", "to_k", "to_v")] + [
        f"single_transformer_blocks.0.{m}" for m in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out")
    ]
    original = make_layers(modules, family="flux")
    write_lora_file(original, tmp_path / "flux.safetensors", "kohya")
    lora = read_lora_file(tmp_path / "flux.safetensors")
    assert (lora.format, lora.family) == ("kohya", "flux")
    assert lora.layers["single_transformer_blocks.0.proj_mlp"].up.shape == (12288, 4)
    assert_same_deltas(lora.layers, original)


def test_unequal_ranks_in_a_fused_group_come_back_exact(tmp_path):
    modules = [f"transformer_blocks.0.attn.{m}" for m in ("to_q", "to_k", "to_v")]
    original = make_layers(modules, rank={modules[0]: 2, modules[1]: 4, modules[2]: 6})
    for file_format in ("kohya", "xlabs", "diffusers"):
        write_lora_file(original, tmp_path / f"{file_format}.safetensors", file_format)
        assert_same_deltas(read_lora_file(tmp_path / f"{file_format}.safetensors").layers, original)


def test_partial_fused_groups(tmp_path):
    # Only q in a double block and q/k/v without proj_mlp in a single block, as attention-only trainers produce.
    modules = ["transformer_blocks.0.attn.to_q"] + [f"single_transformer_blocks.0.attn.to_{x}" for x in "qkv"]
    original = make_layers(modules)
    write_lora_file(original, tmp_path / "kohya.safetensors", "kohya")
    lora = read_lora_file(tmp_path / "kohya.safetensors")
    assert lora.format == "kohya"
    assert_same_deltas(lora.layers, original)
    with pytest.raises(ValueError, match="to_k"):
        write_lora_file(original, tmp_path / "bfl.safetensors", "bfl")
    with pytest.raises(ValueError, match="single_transformer_blocks.0.proj_mlp"):
        write_lora_file(make_layers(["single_transformer_blocks.0.proj_mlp"]), tmp_path / "x.safetensors", "xlabs")
    with pytest.raises(ValueError, match="transformer_blocks.0.ff.net.2"):
        mixed = make_layers(["transformer_blocks.0.ff.net.2", "transformer_blocks.0.attn.to_q"])
        write_lora_file(mixed, tmp_path / "k.safetensors", "kohya")


def test_comfyui_lora_a_b_names_and_peft_metadata_patterns(tmp_path):
    original = make_layers(block_modules(DOUBLE_MODULES[:4], ()))
    write_lora_file(original, tmp_path / "bfl.safetensors", "bfl")
    tensors = safetensors.torch.load_file(str(tmp_path / "bfl.safetensors"))
    saved(tmp_path / "comfy.safetensors", {f"diffusion_model.{k}": v for k, v in tensors.items()})
    lora = read_lora_file(tmp_path / "comfy.safetensors")
    assert lora.format == "comfyui"
    assert_same_deltas(lora.layers, original)

    # A model-level PEFT save: unprefixed LoraConfig fields, a regex alpha_pattern, no `transformer.` key prefix.
    layer = make_layers(["transformer_blocks.1.attn.to_q", "transformer_blocks.1.attn.to_k"])
    config = {"r": 4, "lora_alpha": 8, "alpha_pattern": {"attn.to_k": 2}}
    tensors = {f"{m}.lora_{ab}.weight": t for m, l in layer.items() for ab, t in (("A", l.down), ("B", l.up))}
    lora = read_lora_file(saved(tmp_path / "peft.safetensors", tensors, {"lora_adapter_metadata": json.dumps(config)}))
    assert lora.format == "diffusers"
    assert lora.layers["transformer_blocks.1.attn.to_q"].scale == 2.0
    assert lora.layers["transformer_blocks.1.attn.to_k"].scale == 0.5

    # Network-alpha keys (kohya-trained, diffusers-named files) give alpha / rank.
    tensors = {f"transformer.{k}": v for k, v in tensors.items()}
    tensors["transformer.transformer_blocks.1.attn.to_q.alpha"] = torch.tensor(1.0)
    lora = read_lora_file(saved(tmp_path / "alphas.safetensors", tensors))
    assert lora.layers["transformer_blocks.1.attn.to_q"].scale == 0.25
    assert lora.layers["transformer_blocks.1.attn.to_k"].scale == 1.0


def test_kohya_embedders_and_final_layer_keep_their_alpha(tmp_path):
    # diffusers' kohya converter drops final_layer alphas and leaves these modules without the `transformer.` prefix.
    generator = torch.Generator().manual_seed(1)
    tensors, expected = {}, {}
    for stem, module, alpha in (
        ("lora_unet_final_layer_linear", "proj_out", 1.0),
        ("lora_unet_final_layer_adaLN_modulation_1", "norm_out.linear", 2.0),
        ("lora_unet_img_in", "x_embedder", 8.0),
    ):
        inputs, outputs = linear_shapes("proving-ground")[module]
        tensors[f"{stem}.lora_down.weight"] = torch.randn(4, inputs, generator=generator)
        tensors[f"{stem}.lora_up.weight"] = torch.randn(outputs, 4, generator=generator)
        tensors[f"{stem}.alpha"] = torch.tensor(alpha)
        expected[module] = alpha / 4
    lora = read_lora_file(saved(tmp_path / "embedders.safetensors", tensors))
    assert lora.family == "proving-ground" and lora.unknown_keys == []
    assert {module: layer.scale for module, layer in lora.layers.items()} == expected
    # BFL's final modulation is (shift, scale); diffusers' norm_out is (scale, shift).
    up = tensors["lora_unet_final_layer_adaLN_modulation_1.lora_up.weight"]
    assert torch.equal(lora.layers["norm_out.linear"].up, torch.cat([up[WIDTH:], up[:WIDTH]]))


def test_header_length_starting_with_0x80_is_not_taken_for_a_pickle():
    data = good_file_bytes()
    header_length = int.from_bytes(data[:8], "little")
    padded_length = 0x180  # low byte 0x80, like pickle's PROTO opcode; safetensors allows trailing header spaces
    assert header_length <= padded_length
    header = data[8 : 8 + header_length] + b" " * (padded_length - header_length)
    data = struct.pack("<Q", padded_length) + header + data[8 + header_length :]
    assert data[:1] == b"\x80"
    assert read_lora_bytes(data).layers["transformer_blocks.0.attn.to_q"].rank == 2


def test_unknown_keys_are_reported_not_dropped(tmp_path):
    original = make_layers(block_modules(("attn.to_q", "attn.to_k", "attn.to_v"), ()))
    write_lora_file(original, tmp_path / "kohya.safetensors", "kohya")
    tensors = safetensors.torch.load_file(str(tmp_path / "kohya.safetensors"))
    extra = {
        "garbage.key": torch.zeros(3),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 768),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(768, 4),
        "lora_unet_double_blocks_0_img_attn_qkv.dora_scale": torch.ones(1, WIDTH),
        # Block 5 is a real FLUX.1 block, but the proving ground has only 2.
        "lora_unet_double_blocks_5_img_attn_proj.lora_down.weight": torch.zeros(4, WIDTH),
        "lora_unet_double_blocks_5_img_attn_proj.lora_up.weight": torch.zeros(WIDTH, 4),
    }
    lora = read_lora_file(saved(tmp_path / "extra.safetensors", {**tensors, **extra}))
    assert lora.unknown_keys == sorted(extra)
    assert_same_deltas(lora.layers, original)


def test_file_without_transformer_layers_is_refused(tmp_path):
    path = saved(tmp_path / "te.safetensors", {
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 768),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(3072, 4),
        "something.else": torch.zeros(2),
    })
    message = "no FLUX transformer layers found in te.safetensors; unknown keys: lora_te1"
    with pytest.raises(InvalidLoraFileError, match=message):
        read_lora_file(path)


def test_wrong_shape_layer_is_refused(tmp_path):
    path = saved(tmp_path / "bad.safetensors", {
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, WIDTH),
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(2 * WIDTH, 4),
    })
    message = rf"transformer_blocks\.0\.attn\.to_q maps {WIDTH} → {2 * WIDTH} .* {WIDTH} → {WIDTH}"
    with pytest.raises(InvalidLoraFileError, match=message):
        read_lora_file(path)


def good_file_bytes() -> bytes:
    return safetensors.torch.save({
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(2, WIDTH),
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.ones(WIDTH, 2),
    })


@pytest.mark.parametrize(
    "data, message",
    [
        (pickle.dumps({"lora": [1, 2, 3]}), "x.ckpt is a pickle/torch zip file; only .safetensors"),
        (b"PK\x03\x04" + bytes(64), "x.ckpt is a pickle/torch zip file"),
        (b"", "x.ckpt is empty"),
        (good_file_bytes()[:-10], "truncated or corrupt"),
        (struct.pack("<Q", 10**12) + b"{}", "bad safetensors header length"),
        (struct.pack("<Q", 8) + b"not json" + bytes(8), "header that is not JSON"),
        (
            struct.pack("<Q", 60) + b'{"a": {"dtype": "XX", "shape": [1], "data_offsets": [0, 4]}}' + bytes(4),
            "could not be read",
        ),
    ],
)
def test_malformed_files_fail_in_one_line(data, message):
    with pytest.raises(InvalidLoraFileError) as caught:
        read_lora_bytes(data, name="x.ckpt")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_inspect_command(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 3)
    assert inspect_command(str(bad), as_json=True) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and captured.err.count("\n") == 1

    write_lora_file(make_layers(block_modules(DOUBLE_MODULES, SINGLE_MODULES)), tmp_path / "good.safetensors", "kohya")
    assert inspect_command(str(tmp_path / "good.safetensors"), as_json=True) == 0
    info = json.loads(capsys.readouterr().out)
    modules = NUM_DOUBLE * len(DOUBLE_MODULES) + NUM_SINGLE * len(SINGLE_MODULES)
    assert set(info) == {"format", "family", "modules", "ranks", "unknown_keys", "sha256"}
    assert (info["format"], info["family"], info["modules"], info["ranks"]) == ("kohya", "proving-ground", modules, [4])
    assert inspect_command(str(tmp_path / "good.safetensors"), as_json=False) == 0
    assert f"kohya LoRA for proving-ground, {modules} modules" in capsys.readouterr().out
