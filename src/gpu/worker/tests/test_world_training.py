"""The world trainers on the real (tiny) proving-ground model: losses fall, only the intended parameters move, and
a run resumed from a mid-run checkpoint ends bit-identical to one that was never interrupted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from autolora_worker.fusion import FusionOptions, FusionSession, GateBank, fused_layers, gate_dims
from autolora_worker.models import random_proving_ground
from autolora_worker.world.flow import CaptionCache, flow_loss, noised_batch, training_sigmas
from autolora_worker.training_loop import CHECKPOINT_NAME
from autolora_worker.world.training import train_base, train_gates, train_lora

from conftest import modules_matching, random_lora

COLOURS = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0), "yellow": (1.0, 1.0, -1.0)}


def toy_sampler(shapes: tuple[str, ...] = ("square", "circle")):
    """Flat coloured squares and circles on white, captioned: the smallest stand-in for the world's renderer."""
    rows, cols = np.mgrid[0:64, 0:64]

    def draw(rng: np.random.Generator, batch: int):
        images, captions = [], []
        for _ in range(batch):
            shape = shapes[int(rng.integers(len(shapes)))]
            colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            row, col = rng.integers(20, 44, size=2)
            radius = int(rng.integers(8, 16))
            if shape == "square":
                mask = (abs(rows - row) <= radius) & (abs(cols - col) <= radius)
            else:
                mask = (rows - row) ** 2 + (cols - col) ** 2 <= radius ** 2
            image = np.ones((3, 64, 64), np.float32)
            image[:, mask] = np.array(COLOURS[colour], np.float32)[:, None]
            images.append(image)
            captions.append(f"a {colour} {shape}")
        return torch.from_numpy(np.stack(images)), captions

    return draw


class Interrupted(Exception):
    pass


def interrupt_after(draw, calls: int):
    """The sampler of a run killed partway: it serves `calls` batches, then the process 'dies'."""
    served = [0]

    def wrapped(rng, batch):
        if served[0] == calls:
            raise Interrupted
        served[0] += 1
        return draw(rng, batch)

    return wrapped


def falls(losses: list[float], window: int = 5) -> bool:
    return float(np.mean(losses[-window:])) < float(np.mean(losses[:window]))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def assert_same(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_training_sigmas_are_logit_normal():
    """σ = sigmoid(N(0, 1)): inside (0, 1), median ½, about 60% of draws in the middle band (0.3, 0.7)."""
    sigmas = training_sigmas(torch.Generator().manual_seed(0), 20000)
    assert 0.0 < float(sigmas.min()) and float(sigmas.max()) < 1.0
    assert float(sigmas.median()) == pytest.approx(0.5, abs=0.01)
    assert float(((sigmas > 0.3) & (sigmas < 0.7)).float().mean()) == pytest.approx(0.603, abs=0.015)


def test_caption_cache_encodes_once_and_matches_the_encoder(backbone):
    cache = CaptionCache(backbone, capacity=2)
    condition = cache(["a red square", "a blue circle", "a red square"])
    assert len(cache) == 2
    assert torch.equal(condition.prompt_embeds[0], condition.prompt_embeds[2])
    for row, caption in enumerate(["a red square", "a blue circle"]):
        alone = backbone.encode_prompts([caption])
        # Close, not bitwise: a caption encoded among others and alone runs matmuls of other sizes (flow.py says why
        # resuming is bit-exact only where those agree bit for bit).
        assert torch.allclose(condition.prompt_embeds[row], alone.prompt_embeds[0], atol=1e-5)
        assert torch.allclose(condition.pooled[row], alone.pooled[0], atol=1e-6)
    cache(["a green square"])  # over capacity: the least recently used caption goes
    assert list(cache.entries) == ["a red square", "a green square"]
    assert cache(["a", "b", "c"]).prompt_embeds.shape[0] == 3  # a call may need more than the capacity


def test_base_training_lowers_the_loss_and_resumes_bit_exactly(tmp_path):
    options = dict(steps=12, batch=4, lr=2e-3, seed=3, warmup=2, progress=None, checkpoint_every=5,
                   caption_dropout=0.25)
    backbone = random_proving_ground(seed=1)
    initial = snapshot(backbone.transformer)
    cache = CaptionCache(backbone)
    history = train_base(backbone, toy_sampler(), captions=cache, **options)
    assert falls(history["loss"], window=3)
    assert "" in cache.entries, "caption dropout trains the empty prompt that guidance samples against"
    uninterrupted = snapshot(backbone.transformer)
    assert not all(p.requires_grad for p in backbone.transformer.parameters())
    assert any(not torch.equal(initial[name], uninterrupted[name]) for name in initial)

    backbone.transformer.load_state_dict(initial)
    with pytest.raises(Interrupted):
        train_base(backbone, interrupt_after(toy_sampler(), 7), checkpoint_dir=tmp_path, **options)
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["step"] == 5
    fresh = random_proving_ground(seed=2)  # a new process: nothing of the old model but the checkpoint
    resumed = train_base(fresh, toy_sampler(), checkpoint_dir=tmp_path, resume=True, **options)
    assert_same(uninterrupted, snapshot(fresh.transformer))
    assert resumed == history


def test_base_caption_dropout_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="caption_dropout"):
        train_base(random_proving_ground(seed=1), toy_sampler(), steps=1, batch=2, lr=1e-3, seed=0, progress=None,
                   caption_dropout=1.0)


def test_base_checkpoint_of_another_run_is_refused(tmp_path):
    backbone = random_proving_ground(seed=1)
    train_base(backbone, toy_sampler(), steps=1, batch=2, lr=1e-3, seed=0, progress=None, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="batch"):
        train_base(backbone, toy_sampler(), steps=1, batch=3, lr=1e-3, seed=0, progress=None,
                   checkpoint_dir=tmp_path, resume=True)


def test_lora_training_moves_only_its_factors_and_resumes_bit_exactly(backbone, tmp_path):
    modules = modules_matching(backbone.transformer, "transformer_blocks.0.attn.to_", "ff.net.2")
    options = dict(modules=modules, rank=4, alpha=4.0, steps=12, batch=4, lr=1e-2, seed=5, progress=None,
                   checkpoint_every=4)
    before = snapshot(backbone.transformer)
    history: dict[str, list[float]] = {}
    layers = train_lora(backbone, toy_sampler(("circle",)), history=history, **options)
    assert falls(history["loss"], window=3)
    assert_same(before, snapshot(backbone.transformer))
    assert all(layer.plan is None for layer in fused_layers(backbone.transformer).values())
    assert sorted(layers) == sorted(set(modules))
    for name, layer in layers.items():
        target = fused_layers(backbone.transformer)[name]
        assert layer.down.shape == (4, target.in_features) and layer.up.shape == (target.out_features, 4)
        assert layer.scale == 1.0 and layer.down.dtype == torch.float32 and not layer.up.requires_grad
    assert any(layer.up.abs().sum() > 0 for layer in layers.values())

    with pytest.raises(Interrupted):
        train_lora(backbone, interrupt_after(toy_sampler(("circle",)), 9), checkpoint_dir=tmp_path, **options)
    assert all(layer.plan is None for layer in fused_layers(backbone.transformer).values())
    resumed_history: dict[str, list[float]] = {}
    resumed = train_lora(backbone, toy_sampler(("circle",)), checkpoint_dir=tmp_path, resume=True,
                         history=resumed_history, **options)
    assert resumed_history == history
    for name in layers:
        assert torch.equal(layers[name].down, resumed[name].down) and torch.equal(layers[name].up, resumed[name].up)


def test_lora_unknown_module_fails_loudly(backbone):
    with pytest.raises(ValueError, match="not.a.layer"):
        train_lora(backbone, toy_sampler(), modules=["not.a.layer"], rank=2, alpha=2.0, steps=1, batch=1, lr=1e-3,
                   seed=0, progress=None)


def gate_world(backbone):
    """Two random LoRAs that each 'own' a shape: the target's images are its shape, the interferer's captions
    name the other one."""
    modules = modules_matching(backbone.transformer, "attn.to_q", "attn.to_v", "ff.net.2")
    loras = {"square": random_lora(backbone.transformer, modules, 4, seed=11, magnitude=0.3),
             "circle": random_lora(backbone.transformer, modules[::2], 2, seed=12, magnitude=0.3)}

    def draw_pair(rng: np.random.Generator, batch: int):
        target, other = ("square", "circle") if rng.integers(2) else ("circle", "square")
        images, texts = toy_sampler((target,))(rng, batch)
        _, other_texts = toy_sampler((other,))(rng, batch)
        return loras[target], loras[other], images, texts, other_texts

    return loras, draw_pair


def test_gate_training_moves_only_gates_and_gradients_reach_every_gate_term(backbone):
    loras, draw_pair = gate_world(backbone)
    gates = GateBank(gate_dims(backbone.transformer), seed=0)
    model_before = snapshot(backbone.transformer)
    gates_before = {name: snapshot(gates.gate(name)) for name in gates.module_names()}
    factors_before = {(key, module): (layer.down.clone(), layer.up.clone())
                      for key, lora in loras.items() for module, layer in lora.layers.items()}

    # One gated forward/backward by hand: GatedPlan must let gradients reach all of eq. 7-8's parameters.
    gates.requires_grad_(True)
    with FusionSession(backbone.transformer, list(loras.values()), [1.0, 1.0], FusionOptions(strategy="gated"), gates):
        images, texts = toy_sampler()(np.random.default_rng(0), 2)
        flow_loss(backbone, noised_batch(backbone, images, torch.Generator().manual_seed(0)),
                  CaptionCache.for_backbone(backbone)(texts)).backward()
    used = modules_matching(backbone.transformer, "attn.to_q", "attn.to_v", "ff.net.2")
    for name in used:
        for param_name, param in gates.gate(name).named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, (name, param_name)
    gates.zero_grad(set_to_none=True)
    gates.requires_grad_(False)

    history = train_gates(backbone, gates, draw_pair, steps=10, batch=2, lr=5e-2, seed=0, hinge=False,
                          progress=None)
    assert falls(history["loss"], window=3)
    assert_same(model_before, snapshot(backbone.transformer))
    for (key, module), (down, up) in factors_before.items():
        assert torch.equal(loras[key].layers[module].down, down) and torch.equal(loras[key].layers[module].up, up)
    moved = {name for name in gates.module_names()
             if any(not torch.equal(tensor, gates_before[name][param])
                    for param, tensor in gates.gate(name).state_dict().items())}
    assert moved == set(used)  # gates of layers no LoRA has never see a gradient
    assert not any(param.requires_grad for param in gates.parameters())


def test_gate_training_with_hinge_and_dropout_resumes_bit_exactly(backbone, tmp_path):
    _, draw_pair = gate_world(backbone)
    options = dict(steps=6, batch=2, lr=5e-2, seed=1, hinge=True, hinge_margin=0.5, caption_dropout=0.5,
                   global_lora=True, global_rank=2, progress=None, checkpoint_every=3)
    gates = GateBank(gate_dims(backbone.transformer), seed=0)
    history = train_gates(backbone, gates, draw_pair, **options)
    assert set(history) == {"loss", "mse", "hinge", "lr"}
    assert all(math.isfinite(value) and value >= 0 for value in history["hinge"])
    for total, mse, margin in zip(history["loss"], history["mse"], history["hinge"]):
        assert total == pytest.approx(mse + margin, rel=1e-5)

    resumed_gates = GateBank(gate_dims(backbone.transformer), seed=0)
    with pytest.raises(Interrupted):
        train_gates(backbone, resumed_gates, interrupt_after(draw_pair, 4), checkpoint_dir=tmp_path, **options)
    resumed_gates = GateBank(gate_dims(backbone.transformer), seed=9)
    resumed = train_gates(backbone, resumed_gates, draw_pair, checkpoint_dir=tmp_path, resume=True, **options)
    assert resumed == history
    assert_same(snapshot(gates), snapshot(resumed_gates))


def test_gate_training_without_global_lora_runs(backbone):
    _, draw_pair = gate_world(backbone)
    gates = GateBank(gate_dims(backbone.transformer), seed=0)
    history = train_gates(backbone, gates, draw_pair, steps=2, batch=1, lr=1e-2, seed=0, hinge=False,
                          caption_dropout=0.3, global_lora=False, progress=None)
    assert len(history["loss"]) == 2
