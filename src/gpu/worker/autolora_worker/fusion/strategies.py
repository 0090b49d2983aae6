"""The five fusion strategies, small classes behind one interface, chosen per request by name.

Each strategy turns the LoRAs present at every wrapped layer into one `LayerPlan` per layer. Layers no LoRA
touches get no plan and so run the base layer unchanged; with k = 0 every strategy is the base model exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from peft.utils.merge_utils import dare_linear

from .gates import GateBank, branch_stats, global_lora
from .layer import Branch, FusedLinear, LayerPlan, StepState


@dataclass(frozen=True)
class FusionOptions:
    strategy: str = "gated"
    # gated: add the Global LoRA (eq. 9) as one more branch through the same gate, at this rank.
    global_lora: bool = True
    global_rank: int = 4
    # dare: fraction of ΔW entries kept. 0.2 is the drop rate 0.8 of the authors' DARE baseline.
    dare_density: float = 0.2
    # dare: masks are drawn once per request from this seed, so the same request gives the same image. The engine
    # derives it from the LoRAs fused (engine.mask_seed), never from the image seeds, so no image depends on its grid.
    seed: int = 0
    # klora: the step-dependent scale s* = (α·progress + β) mod α that K-LoRA uses for FLUX.
    klora_alpha: float = 1.5
    klora_beta: float = 1.275


def _low_rank(x: torch.Tensor, branches: list[Branch]) -> torch.Tensor:
    """Σᵢ upᵢ(downᵢ x) with one matmul pair over the stacked factors."""
    down = torch.cat([b.down for b in branches], dim=0)  # (R, in)
    up = torch.cat([b.up for b in branches], dim=1)  # (out, R)
    return F.linear(F.linear(x, down), up)


class FusionStrategy:
    name: ClassVar[str]

    def build(self, layers: dict[str, FusedLinear], branches: dict[str, list[Branch]], options: FusionOptions,
              step: StepState, gates: GateBank | None) -> dict[str, LayerPlan]:
        raise NotImplementedError


class NoFusion(FusionStrategy):
    """The base model: LoRAs are read and validated but not applied (the benchmark's and users' baseline)."""

    name = "none"

    def build(self, layers, branches, options, step, gates):
        return {}


class DirectPlan(LayerPlan):
    def __init__(self, branches: list[Branch]):
        self.branches = branches

    def forward(self, base, x):
        return base(x) + _low_rank(x, self.branches)


class Direct(FusionStrategy):
    """Σ sᵢ·BᵢAᵢx — what diffusers' `set_adapters` does with one weight per adapter."""

    name = "direct"

    def build(self, layers, branches, options, step, gates):
        return {name: DirectPlan(layer_branches) for name, layer_branches in branches.items()}


class MergedPlan(LayerPlan):
    """A layer whose update was merged into a private copy of its weight: one matmul, as fast as the base."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight  # (out, in) = W₀ + ΔW, the base weight itself untouched

    def forward(self, base, x):
        return F.linear(x, self.weight, base.bias)


class Dare(FusionStrategy):
    """Drop-and-rescale on each ΔWᵢ = sᵢBᵢAᵢ, then sum, with peft's `dare_linear`.

    The authors' baseline redraws the mask on every forward; we draw it once per request and layer from
    `options.seed` and merge it into a per-request copy of the layer's weight, so a seed reproduces its image and a
    step costs what the base model's does (the price is one weight copy per adapted layer while the job runs).
    """

    name = "dare"

    def build(self, layers, branches, options, step, gates):
        if not 0.0 < options.dare_density <= 1.0:
            raise ValueError(f"dare_density must be in (0, 1], got {options.dare_density}")
        plans: dict[str, LayerPlan] = {}
        for name, layer_branches in branches.items():
            deltas = [(b.up.float() @ b.down.float()) for b in layer_branches]
            ones = torch.ones(len(deltas), device=deltas[0].device)
            # peft draws its masks from the global RNG; fork it so a request neither depends on nor disturbs it.
            devices = [deltas[0].device] if deltas[0].device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(options.seed * 1_000_003 + layers[name].index)
                merged = dare_linear(deltas, ones, options.dare_density)
            base_weight = layers[name].base.weight
            plans[name] = MergedPlan((base_weight.float() + merged).to(base_weight.dtype))
        return plans


class KLoraPlan(LayerPlan):
    def __init__(self, branches: list[Branch], scores: torch.Tensor, reference: int, layer_index: int,
                 layer_count: int, step: StepState, options: FusionOptions):
        self.branches = branches
        self.scores = scores  # (n,) top-k |ΔW| sums already multiplied by the magnitude balance γᵢ
        self.reference = reference  # position in `branches` of the earliest-loaded LoRA: K-LoRA's "content"
        self.layer_index = layer_index
        self.layer_count = layer_count
        self.step = step
        self.options = options

    def step_scale(self) -> float:
        # K-LoRA counts layer calls; the same counter, derived from (step, layer) rather than kept as state.
        calls = self.step.step * self.layer_count + self.layer_index
        progress = calls / max(1, self.step.total * self.layer_count)
        alpha, beta = self.options.klora_alpha, self.options.klora_beta
        return (alpha * progress + beta) % alpha

    def chosen(self) -> Branch:
        weights = torch.full_like(self.scores, self.step_scale())
        weights[self.reference] = 1.0
        return self.branches[int(torch.argmax(self.scores * weights))]

    def forward(self, base, x):
        chosen = self.chosen()
        return base(x) + F.linear(F.linear(x, chosen.down), chosen.up)


class KLora(FusionStrategy):
    """K-LoRA: at each layer and call, apply exactly one LoRA, chosen by its top-k |ΔW| mass.

    Two LoRAs (the paper's case): use the first if (S₁/γ)/(S₂·s) > 1, where Sᵢ sums the k = r₁r₂ largest |ΔWᵢ|
    entries, γ is the mean over shared layers of Σ|ΔW₁|/Σ|ΔW₂| (ratios above 3x the mean dropped) and s the
    step-dependent scale. Generalisation to k > 2, reducing to exactly that for k = 2: the earliest-loaded LoRA
    at the layer is the reference with weight 1; every other LoRA i scores Sᵢ·γᵢ·s with γᵢ its own balance
    against the reference; k uses the two largest ranks present; the highest score wins.
    """

    name = "klora"

    def build(self, layers, branches, options, step, gates):
        # Each ΔW is formed once, reduced to its two numbers (|ΔW| mass, top-k |ΔW| sum) and dropped: a FLUX.1 LoRA's
        # dense ΔWs over every block linear are ~44 GB in fp32, so holding them all would not fit a GPU.
        masses: dict[str, list[float]] = {}
        tops: dict[str, list[torch.Tensor]] = {}
        for name, layer_branches in branches.items():
            ranks = sorted((b.rank for b in layer_branches), reverse=True)
            top = ranks[0] * (ranks[1] if len(ranks) > 1 else ranks[0])
            masses[name], tops[name] = [], []
            for branch in layer_branches:
                magnitude = (branch.up.float() @ branch.down.float()).abs_().flatten()
                masses[name].append(float(magnitude.sum()))
                tops[name].append(torch.topk(magnitude, min(top, magnitude.numel())).values.sum())
                del magnitude
        balance = self._balance(branches, masses)
        plans: dict[str, LayerPlan] = {}
        for name, layer_branches in branches.items():
            sums = [top * balance[branch.lora_index] for branch, top in zip(layer_branches, tops[name])]
            reference = min(range(len(layer_branches)), key=lambda i: layer_branches[i].lora_index)
            plans[name] = KLoraPlan(layer_branches, torch.stack(sums), reference, layers[name].index,
                                    len(layers), step, options)
        return plans

    @staticmethod
    def _balance(branches: dict[str, list[Branch]], masses: dict[str, list[float]]) -> dict[int, float]:
        """γᵢ per LoRA: mean over layers shared with the first LoRA of Σ|ΔW_first| / Σ|ΔWᵢ|."""
        lora_indices = sorted({b.lora_index for bs in branches.values() for b in bs})
        first = lora_indices[0]
        balance = {first: 1.0}
        for other in lora_indices[1:]:
            ratios = []
            for name, bs in branches.items():
                mass = {b.lora_index: m for b, m in zip(bs, masses[name])}
                if first in mass and other in mass and mass[other] > 0:
                    ratios.append(mass[first] / mass[other])
            if ratios:
                mean = sum(ratios) / len(ratios)
                kept = [r for r in ratios if r <= 3 * mean] or ratios
                balance[other] = sum(kept) / len(kept)
            else:
                balance[other] = 1.0
        return balance


class GatedPlan(LayerPlan):
    def __init__(self, branches: list[Branch], gate):
        self.branches = branches
        self.gate = gate
        self.down = torch.cat([b.down for b in branches], dim=0)  # (R, in): all down-projections in one matmul
        self.splits = [b.rank for b in branches]
        self.stats = None  # each branch's LayerNorm statistics factors (gates.branch_stats), at the first inference

    def forward(self, base, x):
        hidden = F.linear(x, self.down)  # (..., R)
        base_out = base(x)
        if torch.is_grad_enabled():  # training: the reference gate, differentiable end to end
            pieces = hidden.split(self.splits, dim=-1)  # k × (..., rᵢ)
            lora_outs = torch.stack([F.linear(h, b.up) for h, b in zip(pieces, self.branches)])  # (k, ..., out)
            return self.gate(base_out, lora_outs)
        if self.stats is None:
            self.stats = [branch_stats(b.up) for b in self.branches]
        width = base_out.shape[-1]
        pieces = list(hidden.reshape(-1, hidden.shape[-1]).split(self.splits, dim=-1))
        fused = self.gate.low_rank(base_out.reshape(-1, width), pieces, [b.up for b in self.branches], self.stats)
        return fused.reshape(base_out.shape)


class Gated(FusionStrategy):
    """The paper's fine-grained gated fusion (eq. 6-8), optionally with the Global LoRA (eq. 9) as a branch."""

    name = "gated"

    def build(self, layers, branches, options, step, gates):
        if gates is None:
            raise ValueError("gated fusion needs gate weights; none are loaded")
        plans: dict[str, LayerPlan] = {}
        for name, layer_branches in branches.items():
            if name not in gates:
                raise ValueError(f"the gate file has no gate for layer {name}")
            all_branches = list(layer_branches)
            if options.global_lora:
                down, up = global_lora([b.down for b in layer_branches], [b.up for b in layer_branches],
                                       options.global_rank)
                all_branches.append(Branch(down, up, lora_index=-1))
            plans[name] = GatedPlan(all_branches, gates.gate(name))
        return plans


STRATEGIES: dict[str, type[FusionStrategy]] = {cls.name: cls for cls in (NoFusion, Direct, Dare, KLora, Gated)}


def get_strategy(name: str) -> FusionStrategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown fusion strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None
