"""Fusion strategies on a tiny real FluxTransformer2DModel: exactness, equivalences, and the paper's equations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autolora_worker.fusion import STRATEGIES, FusionOptions, FusionSession, Gate, GateBank, gate_dims, global_lora
from autolora_worker.fusion.layer import Branch, FusedLinear
from autolora_worker.fusion.strategies import GatedPlan, KLora
from autolora_worker.sampling import SampleRequest, sample

from conftest import assert_same_seed_image, modules_matching, random_lora, transformer_inputs


def run(backbone, loras=(), strategy="none", gates=None, weights=None, **options):
    inputs = transformer_inputs(backbone)
    with torch.no_grad(), FusionSession(backbone.transformer, list(loras), weights or [1.0] * len(loras),
                                        FusionOptions(strategy=strategy, **options), gates):
        return backbone.transformer(**inputs)[0]


@pytest.fixture(scope="module")
def gates(backbone):
    return GateBank(gate_dims(backbone.transformer), seed=0, family="proving-ground")


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_with_no_lora_is_exactly_the_base_model(backbone, gates, strategy):
    base = run(backbone)
    assert torch.equal(run(backbone, [], strategy, gates), base)


def test_a_request_leaves_no_trace_on_the_next(backbone, gates):
    base = run(backbone)
    lora = random_lora(backbone.transformer, modules_matching(backbone.transformer, "attn."), rank=4, seed=1)
    for strategy in STRATEGIES:
        run(backbone, [lora], strategy, gates)
        assert torch.equal(run(backbone), base), strategy


def test_direct_equals_the_base_model_with_merged_weights(backbone):
    model = backbone.transformer
    loras = [random_lora(model, modules_matching(model, "attn.to_", "ff.net"), rank=4, seed=2, scale=0.7),
             random_lora(model, modules_matching(model, "attn.to_q", "proj_mlp", "norm1.linear"), rank=8, seed=3)]
    weights = [1.0, 0.5]
    fused = run(backbone, loras, "direct", weights=weights)

    merged = copy.deepcopy(model)
    for lora, weight in zip(loras, weights):
        for module, layer in lora.layers.items():
            merged.get_submodule(module).base.weight.data += weight * layer.delta()
    with torch.no_grad():
        expected = merged(**transformer_inputs(backbone))[0]
    assert not torch.allclose(fused, run(backbone), atol=1e-4), "the LoRAs should change the output"
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)


def _reference_gated(x, branches, gate: Gate):
    """Eq. 6-8 written out from the paper, independent of the Gate module's code."""
    base = x @ gate_base_weight.T + gate_base_bias
    outs = torch.stack([(x @ b.down.T) @ b.up.T for b in branches])  # (k, ..., D)

    def layer_norm(t, weight, bias):
        mean = t.mean(-1, keepdim=True)
        var = ((t - mean) ** 2).mean(-1, keepdim=True)
        return (t - mean) / torch.sqrt(var + 1e-5) * weight + bias

    x_hat = layer_norm(base, gate.ln_x.weight, gate.ln_x.bias)
    l_hat = layer_norm(outs, gate.ln_l.weight, gate.ln_l.bias)
    g = 1 / (1 + torch.exp(-(x_hat * gate.w_x + l_hat * gate.w_l + x_hat * l_hat * gate.w_c + gate.b)))
    return base + sum(gate.w_o * g[i] * outs[i] for i in range(len(branches)))


def test_gated_matches_an_independent_reference_of_eq_6_to_8():
    global gate_base_weight, gate_base_bias
    torch.manual_seed(4)
    dim_in, dim_out = 24, 40
    linear = nn.Linear(dim_in, dim_out)
    gate_base_weight, gate_base_bias = linear.weight.detach(), linear.bias.detach()
    gate = Gate(dim_out, torch.Generator().manual_seed(5))
    with torch.no_grad():  # move the LayerNorms and w_o off their identity init so every term is exercised
        for parameter in (gate.ln_x.weight, gate.ln_x.bias, gate.ln_l.weight, gate.ln_l.bias, gate.w_o):
            parameter.copy_(torch.randn_like(parameter))
    branches = [Branch(torch.randn(r, dim_in), torch.randn(dim_out, r), i) for i, r in enumerate((2, 5, 3))]
    layer = FusedLinear(linear, "layer", 0)
    layer.plan = GatedPlan(branches, gate)
    x = torch.randn(2, 7, dim_in)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _reference_gated(x, branches, gate), atol=1e-5, rtol=1e-5)


def test_global_lora_is_the_truncated_svd_of_the_summed_updates():
    torch.manual_seed(6)
    downs = [torch.randn(r, 48) for r in (2, 6, 3)]
    ups = [torch.randn(32, r) for r in (2, 6, 3)]
    total = sum(u @ d for u, d in zip(ups, downs))
    u, s, vh = torch.linalg.svd(total)
    for rank in (1, 4, 11):
        down, up = global_lora(downs, ups, rank)
        assert down.shape == (rank, 48) and up.shape == (32, rank)
        expected = (u[:, :rank] * s[:rank]) @ vh[:rank]
        torch.testing.assert_close(up @ down, expected, atol=1e-4, rtol=1e-4)
    down, up = global_lora(downs, ups, 64)  # a rank above Σ rᵢ = 11 is the exact sum
    torch.testing.assert_close(up @ down, total, atol=1e-4, rtol=1e-4)


def test_gated_adds_the_global_branch_only_when_asked(backbone, gates):
    model = backbone.transformer
    loras = [random_lora(model, modules_matching(model, "attn.to_q"), rank=r, seed=7 + r) for r in (2, 4)]
    with FusionSession(model, loras, [1.0, 1.0], FusionOptions("gated", global_lora=True), gates) as session:
        assert all(len(plan.branches) == 3 for plan in session.plans.values())
    with FusionSession(model, loras, [1.0, 1.0], FusionOptions("gated", global_lora=False), gates) as session:
        assert all(len(plan.branches) == 2 for plan in session.plans.values())
    assert not torch.allclose(run(backbone, loras, "gated", gates), run(backbone, loras, "gated", gates,
                                                                         global_lora=False))


LAYER_SUBSETS = [("attn.to_", "attn.add_"), ("ff.net", "ff_context"), ("single_transformer_blocks",),
                 ("transformer_blocks.0.",)]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_any_number_of_loras_with_mixed_ranks_and_disjoint_layers(backbone, gates, k):
    model = backbone.transformer
    ranks = [2, 8, 16, 32]
    # disjoint subsets: LoRA i only covers layers of subset i that no other LoRA covers
    taken: set[str] = set()
    loras = []
    for i in range(k):
        modules = [m for m in modules_matching(model, *LAYER_SUBSETS[i]) if m not in taken]
        taken.update(modules)
        loras.append(random_lora(model, modules, rank=ranks[i], seed=20 + i, magnitude=0.2))
    base = run(backbone)
    for strategy in STRATEGIES:
        out = run(backbone, loras, strategy, gates)
        assert torch.isfinite(out).all(), strategy
        if strategy != "none":
            assert not torch.allclose(out, base, atol=1e-4), f"{strategy} with k={k} changed nothing"


def test_a_layers_gate_sees_only_the_loras_that_have_that_layer(backbone, gates):
    model = backbone.transformer
    only_q = random_lora(model, modules_matching(model, "transformer_blocks.0.attn.to_q"), rank=4, seed=30)
    everywhere = random_lora(model, modules_matching(model, "attn.to_"), rank=2, seed=31)
    options = FusionOptions("gated", global_lora=False)
    with FusionSession(model, [only_q, everywhere], [1.0, 1.0], options, gates) as session:
        assert len(session.plans["transformer_blocks.0.attn.to_q"].branches) == 2
        assert len(session.plans["transformer_blocks.0.attn.to_k"].branches) == 1


def test_klora_with_two_loras_follows_the_published_rule():
    """Layer by layer, K-LoRA picks LoRA 1 iff (S₁/γ)/(S₂·s) > 1."""
    torch.manual_seed(8)
    linears = {f"l{i}": FusedLinear(nn.Linear(16, 16), f"l{i}", i) for i in range(6)}
    r1, r2 = 2, 3
    branches = {name: [Branch(torch.randn(r1, 16), torch.randn(16, r1) * (1 + i), 0),
                       Branch(torch.randn(r2, 16), torch.randn(16, r2) * 2.0, 1)]
                for i, name in enumerate(linears)}
    step = type("S", (), {"step": 3, "total": 10})()
    options = FusionOptions("klora")
    plans = KLora().build(linears, branches, options, step, None)
    deltas = {n: [b.up @ b.down for b in bs] for n, bs in branches.items()}
    gamma = sum(float(d[0].abs().sum() / d[1].abs().sum()) for d in deltas.values()) / len(deltas)
    for name, plan in plans.items():
        s = plan.step_scale()
        s1, s2 = (torch.topk(d.abs().flatten(), r1 * r2).values.sum() for d in deltas[name])
        expected_first = (s1 / gamma) / (s2 * s) > 1
        x = torch.randn(4, 16)
        out = plan.forward(lambda t: torch.zeros(4, 16), x)
        chosen = 0 if torch.allclose(out, x @ deltas[name][0].T, atol=1e-4) else 1
        assert chosen == (0 if expected_first else 1), name
        assert torch.allclose(out, x @ deltas[name][chosen].T, atol=1e-4)


def test_dare_masks_follow_the_request_seed(backbone):
    model = backbone.transformer
    loras = [random_lora(model, modules_matching(model, "attn.to_"), rank=4, seed=40 + i) for i in range(2)]
    first = run(backbone, loras, "dare", seed=1)
    assert torch.equal(first, run(backbone, loras, "dare", seed=1))
    assert not torch.equal(first, run(backbone, loras, "dare", seed=2))


def test_same_seed_gives_the_same_pixels(backbone, gates):
    model = backbone.transformer
    loras = [random_lora(model, modules_matching(model, "attn.to_"), rank=4, seed=50 + i) for i in range(2)]
    request = SampleRequest("a red hexagon with stripes", seeds=[7, 8], steps=3, guidance=1.0, height=64, width=64)

    def generate(seeds=None):
        with FusionSession(model, loras, [1.0, 1.0], FusionOptions("gated"), gates) as session:
            req = request if seeds is None else SampleRequest(**{**request.__dict__, "seeds": seeds})
            return sample(backbone, req, on_step_start=session.set_step)

    first, second = generate(), generate()
    assert first.dtype == "uint8" and first.shape == (2, 64, 64, 3)
    for seed in range(2):
        assert_same_seed_image(first[seed], second[seed], "the same request twice")
    assert not (first[0] == first[1]).all(), "different seeds should give different images"
    assert_same_seed_image(generate([8])[0], first[1], "a seed alone and in a batch")


def test_true_cfg_guides_against_the_empty_prompt(backbone):
    """v = v_u + s·(v_c − v_u): with the empty prompt itself both halves agree and guidance changes nothing;
    with a real prompt it does, and a seed's image still does not depend on the batch (within conftest's bounds)."""
    def generate(prompt, true_cfg, seeds=(7, 8)):
        request = SampleRequest(prompt, seeds=list(seeds), steps=3, guidance=1.0, height=64, width=64,
                                true_cfg=true_cfg)
        return sample(backbone, request)

    assert np.abs(generate("", 4.0).astype(int) - generate("", 1.0).astype(int)).max() <= 1
    guided = generate("a red hexagon with stripes", 4.0)
    assert (guided != generate("a red hexagon with stripes", 1.0)).any()
    assert_same_seed_image(generate("a red hexagon with stripes", 4.0, seeds=(8,))[0], guided[1], "seed 8 alone")
    with pytest.raises(ValueError, match="true_cfg"):
        generate("a red hexagon", 0.5)


def test_gate_files_round_trip_and_refuse_another_model(backbone, tmp_path):
    dims = gate_dims(backbone.transformer)
    bank = GateBank(dims, seed=3, family="proving-ground")
    path = tmp_path / "gates-v7.safetensors"
    bank.save(path, version="v7")
    loaded = GateBank.load(path, dims, "proving-ground")
    assert loaded.info.version == "v7"
    name = loaded.module_names()[0]
    assert torch.equal(loaded.gate(name).w_c, bank.gate(name).w_c)
    with pytest.raises(ValueError, match="family 'proving-ground'"):
        GateBank.load(path, dims, "flux")
    with pytest.raises(ValueError, match="layers without gates"):
        GateBank.load(path, {**dims, "extra.layer": 8}, "proving-ground")


def test_untrained_gates_are_reproducible(backbone):
    a, b = GateBank(gate_dims(backbone.transformer), seed=0), GateBank(gate_dims(backbone.transformer), seed=0)
    name = a.module_names()[3]
    assert torch.equal(a.gate(name).w_x, b.gate(name).w_x)
    assert torch.equal(a.gate(name).w_o, torch.ones_like(a.gate(name).w_o))


def test_dare_keeping_every_entry_is_direct_addition(backbone):
    model = backbone.transformer
    loras = [random_lora(model, modules_matching(model, "attn.to_"), rank=4, seed=60 + i) for i in range(2)]
    with pytest.warns(UserWarning, match="no pruning"):
        kept_all = run(backbone, loras, "dare", dare_density=1.0)
    torch.testing.assert_close(kept_all, run(backbone, loras, "direct"), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_the_compiled_gate_computes_what_the_eager_gate_does_for_one_to_five_loras(backbone):
    generator = torch.Generator().manual_seed(11)
    gate = Gate(48, generator)
    with torch.no_grad():
        for k in range(1, 6):
            base = torch.randn(2, 7, 48, generator=generator)
            loras = torch.randn(k, 2, 7, 48, generator=generator) * 0.3
            gate.compiled = False
            eager = gate(base, loras)
            gate.compiled = True
            torch.testing.assert_close(gate(base, loras), eager, atol=1e-5, rtol=1e-5, msg=f"k = {k}")
    # Through a whole gated step with LoRAs of mixed ranks (and the Global LoRA as one more branch).
    model = backbone.transformer
    loras = [random_lora(model, modules_matching(model, "attn.to_", "ff.net"), rank=rank, seed=rank, magnitude=0.3)
             for rank in (1, 4, 8)]
    inputs = transformer_inputs(backbone)
    outputs = {}
    for compiled in (False, True):
        gates = GateBank(gate_dims(model), seed=2).set_compiled(compiled)
        with torch.no_grad(), FusionSession(model, loras, [1.0, 0.7, 1.3], FusionOptions("gated"), gates):
            outputs[compiled] = model(**inputs)[0]
    torch.testing.assert_close(outputs[True], outputs[False], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_the_low_rank_gate_computes_what_the_reference_gate_does_on_the_stacked_outputs():
    # Statistics from the rank-r activations, outputs made a token chunk at a time (600 tokens: three chunks on the
    # CPU), eager and compiled, against gate_math on the (k, tokens, D) stack; ranks mixed, one token all zero; and
    # a layer small enough to take the stacked path.
    from autolora_worker.fusion.gates import CPU_TOKEN_CHUNK, SMALL_STACK, branch_stats, gate_math

    generator = torch.Generator().manual_seed(12)
    for width, tokens in ((512, 2 * CPU_TOKEN_CHUNK + 88), (16, 9)):
        gate = Gate(width, generator)
        with torch.no_grad():
            for k in range(1, 6):
                assert (k * tokens * width > SMALL_STACK) == (width == 512)
                ranks = [1 + (3 * i) % 8 for i in range(k)]
                hidden = [torch.randn(tokens, rank, generator=generator) for rank in ranks]
                hidden[0][5] = 0  # a token the LoRA does not move: LayerNorm of a constant row
                ups = [torch.randn(width, rank, generator=generator) * 0.3 + 0.05 for rank in ranks]
                base = torch.randn(tokens, width, generator=generator)
                reference = gate_math(base, torch.stack([h @ up.T for h, up in zip(hidden, ups)]), gate.w_x, gate.w_l,
                                      gate.w_c, gate.b, gate.w_o, gate.ln_x.weight, gate.ln_x.bias, gate.ln_l.weight,
                                      gate.ln_l.bias, gate.ln_x.eps)
                stats = [branch_stats(up) for up in ups]
                for compiled in (False, True):
                    gate.compiled = compiled
                    torch.testing.assert_close(gate.low_rank(base, hidden, ups, stats), reference, atol=1e-5,
                                               rtol=1e-5, msg=f"{width} wide, k = {k}, compiled = {compiled}")


def test_a_gate_that_cannot_be_compiled_runs_eagerly_and_says_so_once(monkeypatch, capsys):
    from autolora_worker.fusion import gates as gates_module

    def unavailable(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(gates_module.torch, "compile", unavailable)
    monkeypatch.setattr(gates_module, "COMPILED_GATE", gates_module._CompiledGate())
    monkeypatch.setattr(gates_module, "COMPILED_POINTWISE", gates_module._CompiledGate(gates_module.gate_pointwise))
    gate = Gate(16, torch.Generator().manual_seed(0))
    base, loras = torch.randn(3, 16), torch.randn(2, 3, 16)
    wide = Gate(1024, torch.Generator().manual_seed(0))  # past SMALL_STACK, so the elementwise part is compiled
    hidden, ups = [torch.randn(300, 2), torch.randn(300, 4)], [torch.randn(1024, 2), torch.randn(1024, 4)]
    wide_base = torch.randn(300, 1024)
    stats = [gates_module.branch_stats(up) for up in ups]
    with torch.no_grad():
        eager, eager_low_rank = gate(base, loras), wide.low_rank(wide_base, hidden, ups, stats)
        gate.compiled = True
        assert torch.equal(gate(base, loras), eager) and torch.equal(gate(base, loras), eager)
        wide.compiled = True
        assert torch.equal(wide.low_rank(wide_base, hidden, ups, stats), eager_low_rank)
    # Once per compiled function that failed: the whole gate, and its elementwise part.
    assert capsys.readouterr().err.count("compiling the gate failed (no C++ compiler found); using the eager gate") == 2
