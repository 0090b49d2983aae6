"""The LoRA encoder (eq. 1-3): embedding contract, contrastive training (loss falls, only the encoder trains, resume
is bit-exact, groups keep false negatives out), the saved folder and the `embed` command."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autolora_worker.__main__ import main
from autolora_worker.errors import IncompatibleLoraError, ModelLoadError
from autolora_worker.lora.canonical import CanonicalLora, LoraLayer
from autolora_worker.lora.formats import write_lora_file
from autolora_worker.encoder import (CONFIG_NAME, LoraEncoder, draw_batch, embed_loras, layer_table, layer_type,
                                     load_encoder, save_encoder, train_encoder)
from autolora_worker.encoder import training as encoder_training

from conftest import modules_matching, random_lora

SMALL = dict(width=32, depth=1, heads=2, probes=2)  # a tiny real encoder: the tests check contracts, not quality
SHAPES = ("circle", "square", "triangle", "hexagon", "star", "heart", "cross", "ring")


def small_encoder(backbone, seed: int = 0) -> LoraEncoder:
    return LoraEncoder.for_model(backbone.transformer, seed=seed, **SMALL)


def examples_of(backbone, count: int = 8) -> list[tuple[CanonicalLora, list[str]]]:
    """`count` random LoRAs over every wrapped linear, different ranks, each with its own concept's captions."""
    modules = layer_table_names(backbone)
    return [(random_lora(backbone.transformer, modules, rank=2 + index, seed=100 + index, name=f"lora-{index}"),
             [f"a red {SHAPES[index]}", f"a {SHAPES[index]} in flat style"]) for index in range(count)]


def layer_table_names(backbone) -> list[str]:
    return [layer.name for layer in layer_table(backbone.transformer)]


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


class Interrupted(Exception):
    pass


def test_layer_types_drop_only_the_block_index():
    assert layer_type("transformer_blocks.3.attn.to_out.0") == "transformer_blocks.*.attn.to_out.0"
    assert layer_type("single_transformer_blocks.0.proj_mlp") == "single_transformer_blocks.*.proj_mlp"
    assert layer_type("context_embedder") == "context_embedder"


def test_embeddings_are_unit_vectors_in_the_text_space(backbone):
    encoder = LoraEncoder.for_model(backbone.transformer)
    loras = [random_lora(backbone.transformer, modules_matching(backbone.transformer, "attn"), rank=4, seed=1),
             random_lora(backbone.transformer, layer_table_names(backbone), rank=16, seed=2)]
    embeddings = embed_loras(encoder, loras)
    assert embeddings.shape == (2, 384)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(2), atol=1e-6)
    assert embed_loras(encoder, []).shape == (0, 384)


def test_batch_company_does_not_change_a_loras_embedding(backbone):
    """Layers a LoRA lacks are masked out of attention and pooling, so padding it into a batch of LoRAs with other
    layers and larger ranks changes nothing but float rounding."""
    encoder = small_encoder(backbone)
    model = backbone.transformer
    alone = random_lora(model, modules_matching(model, "single_transformer_blocks.1."), rank=2, seed=3)
    company = [random_lora(model, layer_table_names(backbone), rank=32, seed=4),
               random_lora(model, modules_matching(model, "transformer_blocks.0.attn"), rank=8, seed=5)]
    by_itself = embed_loras(encoder, [alone])[0]
    batched = embed_loras(encoder, [company[0], alone, company[1]])
    assert torch.allclose(batched[1], by_itself, atol=1e-5)
    assert (batched[0] @ by_itself).item() < 0.9999  # the company itself embeds differently


def test_strength_and_rank_of_the_same_update_do_not_change_the_embedding(backbone):
    """Each layer's response is RMS-normalised: ×1000 the scale, or the same ΔW factored at twice the rank,
    embeds (nearly) identically; a different update does not."""
    encoder = LoraEncoder.for_model(backbone.transformer)
    model = backbone.transformer
    lora = random_lora(model, layer_table_names(backbone), rank=4, seed=6)
    louder = CanonicalLora({m: LoraLayer(l.down, l.up, l.scale * 1000) for m, l in lora.layers.items()})
    # B·A = [B/2, B/2]·[A; A]: the same update at rank 8.
    doubled = CanonicalLora({m: LoraLayer(torch.cat([l.down, l.down]), torch.cat([l.up, l.up], 1) / 2, l.scale)
                             for m, l in lora.layers.items()})
    other = random_lora(model, layer_table_names(backbone), rank=4, seed=7)
    embeddings = embed_loras(encoder, [lora, louder, doubled, other])
    cosines = embeddings @ embeddings[0]
    assert cosines[1] > 0.99999 and cosines[2] > 0.99999
    assert cosines[3] < 0.999


def test_unknown_or_misshapen_modules_are_named(backbone):
    encoder = small_encoder(backbone)
    foreign = CanonicalLora({"transformer_blocks.7.attn.to_q": LoraLayer(torch.zeros(2, 128), torch.zeros(128, 2))},
                            name="foreign.safetensors")
    with pytest.raises(IncompatibleLoraError, match=r"transformer_blocks\.7\.attn\.to_q") as error:
        embed_loras(encoder, [foreign])
    assert "foreign.safetensors" in str(error.value) and "\n" not in str(error.value)
    misshapen = CanonicalLora({"context_embedder": LoraLayer(torch.zeros(2, 100), torch.zeros(128, 2))})
    with pytest.raises(IncompatibleLoraError, match="context_embedder"):
        embed_loras(encoder, [misshapen])


def test_training_lowers_the_loss_and_moves_only_the_encoder(backbone):
    encoder = small_encoder(backbone)
    examples = examples_of(backbone)
    before, text_before = snapshot(encoder), snapshot(backbone.text_encoder.model)
    factors_before = [lora.layers["context_embedder"].up.clone() for lora, _ in examples]
    lines: list[str] = []
    history = train_encoder(encoder, examples, steps=40, batch=8, seed=0, text_encoder=backbone.text_encoder,
                            progress=lines.append, log_every=20)
    assert np.mean(history["loss"][-5:]) < 0.5 * np.mean(history["loss"][:5])
    assert history["accuracy"][-1] == 1.0
    assert "[encoder] step 40/40" in lines[-1] and "accuracy" in lines[-1]
    after = snapshot(encoder)
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, f"encoder parameters that never trained: {unchanged}"
    assert all(torch.equal(tensor, text_before[name]) for name, tensor in snapshot(backbone.text_encoder.model).items())
    assert not any(param.requires_grad for param in backbone.text_encoder.model.parameters())
    assert all(torch.equal(lora.layers["context_embedder"].up, up) for (lora, _), up in zip(examples, factors_before))
    assert not encoder.training and not any(param.requires_grad for param in encoder.parameters())


def test_layer_dropout_shows_part_of_a_lora_and_never_nothing(backbone):
    encoder = small_encoder(backbone)
    lora, _ = examples_of(backbone, 1)[0]
    prepared = encoder_training.prepare_lora(encoder, lora)
    rng = np.random.default_rng(0)
    kept = [encoder_training.drop_layers(encoder, prepared, rng, 0.5, 0.0) for _ in range(200)]
    share = np.mean([len(part) for part in kept]) / len(prepared)
    assert 0.4 < share < 0.6 and all(part for part in kept)
    # A dropped layer type goes from every block at once, as when a LoRA adapts attention only.
    for part in (encoder_training.drop_layers(encoder, prepared, rng, 0.0, 0.5) for _ in range(50)):
        kinds_kept = {encoder.kind_of[position] for position, _ in part}
        assert all(encoder.kind_of[position] in kinds_kept for position, _ in prepared
                   if encoder.kind_of[position] in kinds_kept)
        assert len(part) == sum(encoder.kind_of[position] in kinds_kept for position, _ in prepared)
    assert encoder_training.drop_layers(encoder, prepared, rng, 0.999999, 0.999999)  # one layer stays
    with pytest.raises(ValueError, match="kind_dropout must be in \\[0, 1\\)"):
        train_encoder(encoder, examples_of(backbone), steps=2, batch=4, seed=0, kind_dropout=1.0,
                      text_encoder=backbone.text_encoder, progress=None)


def test_training_with_dropout_still_learns_and_is_reproducible(backbone, tmp_path):
    examples = examples_of(backbone)
    options = dict(steps=40, batch=8, seed=0, text_encoder=backbone.text_encoder, progress=None, layer_dropout=0.3,
                   kind_dropout=0.2)
    encoder = small_encoder(backbone)
    history = train_encoder(encoder, examples, **options)
    assert np.mean(history["loss"][-5:]) < 0.5 * np.mean(history["loss"][:5])
    again = small_encoder(backbone)
    train_encoder(again, examples, **options)
    assert all(torch.equal(a, b) for a, b in zip(snapshot(encoder).values(), snapshot(again).values()))


def test_resumed_training_is_bit_identical_to_an_uninterrupted_run(backbone, tmp_path):
    examples = examples_of(backbone, 6)
    options = dict(steps=10, batch=4, seed=3, text_encoder=backbone.text_encoder, checkpoint_every=3, log_every=1)
    whole = small_encoder(backbone)
    history = train_encoder(whole, examples, progress=None, **options)

    def killed_at_step_7(line: str) -> None:
        if "step 7/10" in line:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_encoder(small_encoder(backbone), examples, checkpoint=tmp_path, progress=killed_at_step_7, **options)
    resumed = small_encoder(backbone, seed=9)  # another init: everything must come from the step-6 checkpoint
    resumed_history = train_encoder(resumed, examples, checkpoint=tmp_path, resume=True, progress=None, **options)
    assert resumed_history == history
    expected = snapshot(whole)
    assert all(torch.equal(tensor, expected[name]) for name, tensor in snapshot(resumed).items())
    with pytest.raises(ValueError, match="batch"):  # a checkpoint of another run is refused, not continued
        train_encoder(small_encoder(backbone), examples, checkpoint=tmp_path, resume=True, progress=None,
                      **{**options, "batch": 3})


def test_loras_read_on_demand_train_the_same_encoder_with_only_a_few_in_memory(backbone):
    examples = examples_of(backbone, 6)
    reads: list[str] = []

    class OnDisk:  # a LoraSource: what the FLUX bootstrap gives for files too many to hold at once
        def __init__(self, lora: CanonicalLora):
            self.lora, self.sha256, self.name = lora, lora.sha256, lora.name

        def load(self) -> CanonicalLora:
            reads.append(self.name)
            return self.lora

    options = dict(steps=8, batch=3, seed=5, text_encoder=backbone.text_encoder, progress=None)
    in_memory = small_encoder(backbone)
    train_encoder(in_memory, examples, **options)
    on_demand = small_encoder(backbone)
    train_encoder(on_demand, [(OnDisk(lora), captions) for lora, captions in examples], resident=2, **options)
    expected = snapshot(in_memory)
    for name, tensor in snapshot(on_demand).items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-5, rtol=1e-5, msg=name)
    assert len(reads) > len(examples)  # two kept at a time, so LoRAs drawn again are read again


def test_groups_keep_one_concept_per_batch(backbone, monkeypatch):
    group_of = [0, 0, 0, 1, 1, 2, 3, 3]
    for step in range(200):
        picks = draw_batch(np.random.default_rng([0, step]), group_of, 4)
        assert len(picks) == 4 and len({group_of[pick] for pick in picks}) == 4

    examples = examples_of(backbone, 6)
    groups = ["circle", "circle", "star", "star", "ring", "cross"]
    drawn: list[list[int]] = []

    def recording(rng, group_ids, batch):
        drawn.append(draw_batch(rng, group_ids, batch))
        return drawn[-1]

    monkeypatch.setattr(encoder_training, "draw_batch", recording)
    train_encoder(small_encoder(backbone), examples, steps=6, batch=4, seed=0, text_encoder=backbone.text_encoder,
                  groups=groups, progress=None)
    assert len(drawn) == 6
    assert all(len({groups[pick] for pick in picks}) == 4 for picks in drawn)
    with pytest.raises(ValueError, match="distinct groups"):
        train_encoder(small_encoder(backbone), examples, steps=1, batch=5, seed=0,
                      text_encoder=backbone.text_encoder, groups=groups, progress=None)


def test_save_and_load_round_trip_and_refusals(backbone, tmp_path):
    encoder = small_encoder(backbone, seed=4)
    loras = [lora for lora, _ in examples_of(backbone, 3)]
    save_encoder(encoder, tmp_path / "encoder", "enc-test", {"train_loras": 3})
    loaded = load_encoder(tmp_path / "encoder", model=backbone.transformer)
    assert loaded.version == "enc-test" and not loaded.training
    # Stored in half precision: the loaded encoder is exactly the trained one with its weights rounded to fp16.
    rounded = copy.deepcopy(encoder).eval()
    rounded.load_state_dict({name: tensor.half().float() if tensor.is_floating_point() else tensor
                             for name, tensor in encoder.state_dict().items()})
    assert torch.equal(embed_loras(loaded, loras), embed_loras(rounded, loras))
    assert F.cosine_similarity(embed_loras(loaded, loras), embed_loras(encoder.eval(), loras)).min() > 0.999
    config = json.loads((tmp_path / "encoder" / CONFIG_NAME).read_text())
    assert config["metadata"] == {"train_loras": 3} and len(config["layers"]) == len(encoder.table)

    with pytest.raises(FileNotFoundError, match="no LoRA encoder"):
        load_encoder(tmp_path / "nowhere")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / CONFIG_NAME).write_text(json.dumps({"format": "gates"}))
    with pytest.raises(ModelLoadError, match="does not hold a LoRA encoder"):
        load_encoder(tmp_path / "foreign")
    shorter = LoraEncoder(layer_table(backbone.transformer)[:-1], **SMALL)
    save_encoder(shorter, tmp_path / "shorter", "enc-short")
    with pytest.raises(ModelLoadError, match="built for another model") as error:
        load_encoder(tmp_path / "shorter", model=backbone.transformer)
    assert "\n" not in str(error.value)
    weights = tmp_path / "encoder" / "encoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelLoadError, match="sha256"):
        load_encoder(tmp_path / "encoder")


def test_embed_command_prints_the_embedding_or_one_error_line(backbone, tmp_path, capsys):
    encoder = small_encoder(backbone)
    save_encoder(encoder, tmp_path / "encoder", "enc-cli")
    lora = random_lora(backbone.transformer, modules_matching(backbone.transformer, "attn"), rank=4, seed=8)
    write_lora_file(lora.layers, tmp_path / "lora.safetensors", "kohya")

    assert main(["embed", str(tmp_path / "lora.safetensors"), "--json", "--encoder", str(tmp_path / "encoder")]) == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record) == {"sha256", "embedding", "dim", "encoder_version", "modules"}
    assert record["dim"] == 384 == len(record["embedding"]) and record["encoder_version"] == "enc-cli"
    assert record["modules"] == len(lora.layers) and len(record["sha256"]) == 64
    expected = embed_loras(load_encoder(tmp_path / "encoder"), [lora])[0]  # the saved (fp16-stored) encoder
    assert torch.allclose(torch.tensor(record["embedding"]), expected, atol=1e-5)

    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    for argv in (["embed", str(tmp_path / "bad.safetensors"), "--encoder", str(tmp_path / "encoder")],
                 ["embed", str(tmp_path / "lora.safetensors"), "--encoder", str(tmp_path / "missing")]):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith("error: ") and captured.err.count("\n") == 1
