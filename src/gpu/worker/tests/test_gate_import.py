"""`gates import --from diffsynth`: the AutoLoRA authors' FLUX.1-dev gates (DiffSynth-Studio's FluxLoraPatcher)
converted into our gate file, checked against diffusers' FLUX.1 transformer built on the meta device."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import FluxTransformer2DModel
from safetensors.torch import save_file

from autolora_worker.__main__ import main
from autolora_worker.families import get_family
from autolora_worker.fusion import GateBank, gate_dims, wrap_linears
from autolora_worker.fusion.diffsynth import PASS_THROUGH, import_diffsynth_gates

# FluxLoraPatcher.default_lora_patterns, written out here apart from the module under test: gated linear → width.
DOUBLE_BLOCK = {"attn.a_to_qkv": 9216, "attn.a_to_out": 3072, "ff_a.0": 12288, "ff_a.2": 3072, "norm1_a.linear": 18432,
                "attn.b_to_qkv": 9216, "attn.b_to_out": 3072, "ff_b.0": 12288, "ff_b.2": 3072, "norm1_b.linear": 18432}
SINGLE_BLOCK = {"to_qkv_mlp": 21504, "proj_out": 3072, "norm.linear": 9216}
# LoraMerger parameter → our Gate parameter.
MERGER = {"weight_base": "w_x", "weight_lora": "w_l", "weight_cross": "w_c", "bias": "b", "weight_out": "w_o",
          "norm_base.weight": "ln_x.weight", "norm_base.bias": "ln_x.bias",
          "norm_lora.weight": "ln_l.weight", "norm_lora.bias": "ln_l.bias"}


def patcher_widths() -> dict[str, int]:
    widths = {f"blocks.{i}.{module}": width for i in range(19) for module, width in DOUBLE_BLOCK.items()}
    return widths | {f"single_blocks.{i}.{module}": width for i in range(38) for module, width in SINGLE_BLOCK.items()}


def key(module: str, parameter: str, prefix: str = "model_dict.") -> str:
    return f"{prefix}{module.replace('.', '___')}.{parameter}"


@pytest.fixture(scope="module")
def flux_dims() -> dict[str, int]:
    with torch.device("meta"):
        model = FluxTransformer2DModel(**get_family("flux").transformer)
    wrap_linears(model)
    return gate_dims(model)


@pytest.fixture(scope="module")
def source_state() -> dict[str, torch.Tensor]:
    """The full published layout (304 gates at full widths) with random values, in bf16 like the published file."""
    generator = torch.Generator().manual_seed(0)
    return {key(module, parameter): torch.randn(width, generator=generator).to(torch.bfloat16)
            for module, width in patcher_widths().items() for parameter in MERGER}


@pytest.fixture(scope="module")
def source_file(source_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("diffsynth") / "model.safetensors"
    save_file(source_state, str(path))
    return path


@pytest.fixture(scope="module")
def imported(source_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "gates.safetensors"
    return import_diffsynth_gates(source_file, out), out


@pytest.fixture(scope="module")
def bank(imported, flux_dims) -> GateBank:
    return GateBank.load(imported[1], flux_dims, "flux")


def source(source_state, module: str, parameter: str) -> torch.Tensor:
    return source_state[key(module, parameter)].float()


def test_the_published_layout_becomes_a_gate_file_a_flux_worker_loads(imported, bank, source_file, flux_dims):
    result, out = imported
    digest = hashlib.sha256(source_file.read_bytes()).hexdigest()
    assert result["source_sha256"] == digest
    assert result["version"] == bank.info.version == f"diffsynth-{digest[:12]}"
    assert (result["gates_converted"], result["gates_split"], result["pass_through_layers"]) == (304, 2 * 19 + 38, 10)
    assert result["out"] == str(out) and "LayerNorm" in result["note"]
    assert bank.info.family == "flux" and bank.module_names() == sorted(flux_dims)


def test_a_split_gate_carries_its_slice_and_an_unsplit_gate_its_vectors(source_state, bank):
    assert torch.equal(bank.gate("transformer_blocks.3.attn.to_k").w_x,
                       source(source_state, "blocks.3.attn.a_to_qkv", "weight_base")[3072:6144])
    assert torch.equal(bank.gate("transformer_blocks.18.attn.add_v_proj").ln_l.bias,
                       source(source_state, "blocks.18.attn.b_to_qkv", "norm_lora.bias")[6144:])
    assert torch.equal(bank.gate("single_transformer_blocks.37.attn.to_q").w_c,
                       source(source_state, "single_blocks.37.to_qkv_mlp", "weight_cross")[:3072])
    assert torch.equal(bank.gate("single_transformer_blocks.37.proj_mlp").b,
                       source(source_state, "single_blocks.37.to_qkv_mlp", "bias")[9216:])
    for ours, theirs in (("transformer_blocks.0.norm1_context.linear", "blocks.0.norm1_b.linear"),
                         ("transformer_blocks.7.attn.to_out.0", "blocks.7.attn.a_to_out"),
                         ("single_transformer_blocks.5.norm.linear", "single_blocks.5.norm.linear")):
        state = bank.gate(ours).state_dict()
        for parameter, ours_parameter in MERGER.items():
            assert torch.equal(state[ours_parameter], source(source_state, theirs, parameter)), (ours, parameter)


def test_an_unsplit_gate_computes_what_the_authors_merger_computes(source_state, bank):
    generator = torch.Generator().manual_seed(1)
    base_out = torch.randn(2, 4, 3072, generator=generator)  # (B, L, D)
    lora_outs = torch.randn(3, 2, 4, 3072, generator=generator) * 0.1  # (k, B, L, D)

    def theirs(parameter):
        return source(source_state, "single_blocks.5.proj_out", parameter)

    # LoraMerger.forward, as DiffSynth-Studio writes it.
    x_hat = F.layer_norm(base_out, (3072,), theirs("norm_base.weight"), theirs("norm_base.bias"), eps=1e-5)
    l_hat = F.layer_norm(lora_outs, (3072,), theirs("norm_lora.weight"), theirs("norm_lora.bias"), eps=1e-5)
    gate = torch.sigmoid(x_hat * theirs("weight_base") + l_hat * theirs("weight_lora")
                         + x_hat * l_hat * theirs("weight_cross") + theirs("bias"))
    expected = base_out + (theirs("weight_out") * gate * lora_outs).sum(dim=0)

    with torch.no_grad():
        fused = bank.gate("single_transformer_blocks.5.proj_out")(base_out, lora_outs)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


def test_layers_outside_the_blocks_add_loras_directly_as_diffsynth_does(bank, flux_dims):
    outside = {name for name in flux_dims if not name.startswith(("transformer_blocks.", "single_transformer_blocks."))}
    assert outside == set(PASS_THROUGH)
    generator = torch.Generator().manual_seed(2)
    for name in ("x_embedder", "time_text_embed.text_embedder.linear_2", "norm_out.linear"):
        base_out = torch.randn(2, 5, flux_dims[name], generator=generator)
        lora_outs = torch.randn(2, 2, 5, flux_dims[name], generator=generator)
        with torch.no_grad():
            fused = bank.gate(name)(base_out, lora_outs)
        torch.testing.assert_close(fused, base_out + lora_outs.sum(dim=0), rtol=0, atol=1e-6)


def without_gate(state, module):
    return {name: tensor for name, tensor in state.items() if not name.startswith(key(module, ""))}


REFUSALS = {
    "missing gate": (lambda state: without_gate(state, "single_blocks.37.norm.linear"),
                     ["1 gates missing", "single_blocks.37.norm.linear"]),
    "extra gate": (lambda state: state | {key("blocks.19.attn.a_to_qkv", parameter): torch.zeros(9216)
                                          for parameter in MERGER},
                   ["1 gates DiffSynth's FLUX.1 patcher does not have", "blocks.19.attn.a_to_qkv"]),
    "wrong width": (lambda state: state | {key("blocks.4.ff_a.0", "weight_lora"): torch.zeros(3072)},
                    ["blocks___4___ff_a___0.weight_lora", "(3072,)", "expected (12288,)"]),
    "unknown parameter": (lambda state: state | {key("blocks.0.attn.a_to_qkv", "norm_base.running_mean"):
                                                 torch.zeros(9216)},
                          ["model_dict.blocks___0___attn___a_to_qkv.norm_base.running_mean", "not a LoraMerger"]),
    "unknown prefix": (lambda state: {name.replace("model_dict.", "pipe.lora_patcher.model_dict."): tensor
                                      for name, tensor in state.items()},
                       ["unknown prefix", "pipe.lora_patcher.model_dict."]),
    "non-finite value": (lambda state: state | {key("single_blocks.2.proj_out", "bias"):
                                                torch.full((3072,), float("nan"))},
                         ["single_blocks___2___proj_out.bias", "non-finite"]),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_file_that_is_not_the_published_layout_is_refused_naming_what_differs(case, source_state, tmp_path):
    change, fragments = REFUSALS[case]
    path = tmp_path / "source" / "model.safetensors"
    path.parent.mkdir()
    save_file(change(source_state), str(path))
    out_folder = tmp_path / "out"
    out_folder.mkdir()
    with pytest.raises(ValueError) as refusal:
        import_diffsynth_gates(path, out_folder / "gates.safetensors")
    for fragment in fragments:
        assert fragment in str(refusal.value), (case, str(refusal.value))
    assert list(out_folder.iterdir()) == []


def test_a_refusal_leaves_an_existing_out_as_it_was(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"these are not the gates you are looking for")
    out = tmp_path / "gates.safetensors"
    out.write_bytes(b"the gates served now")
    with pytest.raises(ValueError, match="cannot read .*model.safetensors as safetensors"):
        import_diffsynth_gates(path, out)
    assert out.read_bytes() == b"the gates served now"
    assert sorted(item.name for item in tmp_path.iterdir()) == ["gates.safetensors", "model.safetensors"]


def test_the_command_prints_one_json_line_and_exits_0_or_2(source_state, flux_dims, tmp_path, capsys):
    # fp16 and without the `model_dict.` prefix, as a file saved from the patcher's ModuleDict itself would be.
    path = tmp_path / "patcher.safetensors"
    save_file({name.removeprefix("model_dict."): tensor.half() for name, tensor in source_state.items()}, str(path))
    out = tmp_path / "gates.safetensors"
    assert main(["gates", "import", str(path), "--from", "diffsynth", "--out", str(out), "--version", "authors"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert (result["version"], result["out"], result["gates_converted"]) == ("authors", str(out), 304)
    bank = GateBank.load(out, flux_dims, "flux")
    assert bank.info.version == "authors"
    assert torch.equal(bank.gate("transformer_blocks.2.attn.add_k_proj").w_o,
                       source_state[key("blocks.2.attn.b_to_qkv", "weight_out")].half().float()[3072:6144])

    not_gates = tmp_path / "notes.txt"
    not_gates.write_text("hello")
    assert main(["gates", "import", str(not_gates), "--from", "diffsynth", "--out", str(tmp_path / "x")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: cannot read") and "notes.txt" in captured.err
    assert not (tmp_path / "x").exists()
