"""The proving ground's LoRA pool: which LoRAs exist, what each truly does, and which are held out.

The base model knows three shapes in the flat style. Every other shape gets *object* LoRAs (trained on that shape,
flat, all colours) and every other style gets *style* LoRAs (trained on the base shapes in that style), several
per concept with different ranks, layer subsets, seeds and file formats, as a community pool would have them. A
few are deliberately *weak* (barely trained) or *off-concept* (named for one concept, trained on another), so
retrieval and fusion meet the noise real pools have.

The plan is a pure function of a seed: the same seed gives the same pool, split included. The held-out split is
drawn per concept (two of every concept's LoRAs, plus a quarter of the odd ones), so every concept is seen in
training and every concept also has LoRAs that no encoder or gate ever trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .render import BASE_SHAPES, SHAPES, STYLES

# Concepts the base model lacks: one object LoRA family per missing shape, one style family per missing style.
OBJECT_CONCEPTS = tuple(shape for shape in SHAPES if shape not in BASE_SHAPES)
STYLE_CONCEPTS = tuple(style for style in STYLES if style != "flat")

# Per concept: (rank, layer subset) of each variant. Ranks 2-32 as community LoRAs have them; three layer subsets.
# The high ranks adapt attention only and "all" comes at ranks 4 and 2: LoRAs of every linear are the largest, and
# the bundle has a 40 MB cap (see also PER_MODULE_FORMATS_FOR_SUBSET below).
VARIANTS = (
    (4, "all"), (8, "attention"), (2, "double"), (4, "attention"),
    (16, "attention"), (8, "double"), (2, "all"), (2, "attention"),
)
RANK_32_EVERY = 3  # every third concept's fifth variant is rank 32 instead of 16: the pool's largest LoRAs
HELD_OUT_PER_CONCEPT = 2

# Which community file formats can hold which layer subset (kohya/ComfyUI/BFL fuse q,k,v and, in single blocks,
# proj_mlp into one tensor; XLabs holds attention only). Formats are cycled through so the pool mixes all five.
FORMATS_FOR_SUBSET = {
    "all": ("kohya", "diffusers", "comfyui", "bfl"),
    "attention": ("xlabs", "diffusers", "kohya"),
    "double": ("comfyui", "bfl", "kohya", "diffusers"),
}
# A fused tensor holds our separately trained q, k, v (and proj_mlp) factors block-diagonally, so its up matrix is
# mostly zeros: a rank-8 double-block LoRA is 300 kB fused and 227 kB per module, a rank-32 attention LoRA 985 kB
# in XLabs and 546 kB in diffusers. Only the rank-2 LoRAs cycle through all five formats; the rest are written in
# the per-module layouts (diffusers, kohya's per-module names). That keeps the pool small enough for the bundle's
# 40 MB cap, and a pool of six variants per concept (the full build's) still holds every format.
PER_MODULE_FORMATS_FOR_SUBSET = {"all": ("diffusers",), "attention": ("diffusers", "kohya"), "double": ("diffusers",)}


def per_module_layout(rank: int, subset: str) -> bool:
    return rank >= 4


def subset_modules(module_names: list[str], subset: str) -> list[str]:
    """The wrapped linears a LoRA of this layer subset adapts. Modulation linears (norm*.linear) are left out,
    as most community FLUX LoRAs leave them out."""
    blocks = [name for name in module_names
              if name.startswith(("transformer_blocks.", "single_transformer_blocks.")) and ".norm" not in name]
    if subset == "all":
        return blocks
    if subset == "attention":
        return [name for name in blocks if ".attn." in name]
    if subset == "double":
        return [name for name in blocks if name.startswith("transformer_blocks.")]
    raise ValueError(f"unknown layer subset {subset!r}; choose all, attention or double")


@dataclass(frozen=True)
class LoraPlan:
    id: str
    kind: str  # object | style | weak | off-concept
    concept: str  # what its name and captions claim (a shape or a style)
    truth: dict  # what it really teaches, for scoring only: {"shape": …} or {"style": …}, {} for a weak LoRA
    trained_on: dict  # the concept its training images show: {"shape": …} or {"style": …}
    rank: int
    subset: str
    seed: int
    format: str
    steps_factor: float  # 1.0 for a normal LoRA; weak ones get a small fraction of the steps
    split: str  # train | heldout

    @property
    def attribute(self) -> str:
        return "shape" if self.concept in SHAPES else "style"

    def record(self) -> dict:
        return asdict(self)


@dataclass
class PoolPlan:
    loras: list[LoraPlan] = field(default_factory=list)

    def split(self, name: str) -> list[LoraPlan]:
        return [lora for lora in self.loras if lora.split == name]

    def by_id(self, lora_id: str) -> LoraPlan:
        for lora in self.loras:
            if lora.id == lora_id:
                return lora
        raise KeyError(lora_id)

    def concepts(self) -> list[str]:
        return list(OBJECT_CONCEPTS) + list(STYLE_CONCEPTS)


def plan_pool(seed: int = 0, concepts: tuple[str, ...] | None = None, variants_per_concept: int = len(VARIANTS),
              odd_ones: int = 16) -> PoolPlan:
    """The whole pool: len(concepts) × variants_per_concept regular LoRAs plus `odd_ones` weak / off-concept ones.

    The defaults give 18 × 8 + 16 = 160 LoRAs. `concepts` and `variants_per_concept` shrink it for CI's reduced
    build; the split rule stays the same (and needs at least three variants per concept).
    """
    rng = np.random.default_rng(seed)
    concepts = concepts or OBJECT_CONCEPTS + STYLE_CONCEPTS
    if variants_per_concept < HELD_OUT_PER_CONCEPT + 1:
        raise ValueError(f"need at least {HELD_OUT_PER_CONCEPT + 1} variants per concept to hold some out")
    plans: list[LoraPlan] = []
    format_turn: dict[tuple[bool, str], int] = {}

    def next_format(subset: str, rank: int) -> str:
        per_module = per_module_layout(rank, subset)
        choices = (PER_MODULE_FORMATS_FOR_SUBSET if per_module else FORMATS_FOR_SUBSET)[subset]
        turn = format_turn.get((per_module, subset), 0)
        format_turn[(per_module, subset)] = turn + 1
        return choices[turn % len(choices)]

    for concept_index, concept in enumerate(concepts):
        attribute = "shape" if concept in SHAPES else "style"
        held_out = set(rng.choice(variants_per_concept, HELD_OUT_PER_CONCEPT, replace=False).tolist())
        for variant in range(variants_per_concept):
            rank, subset = VARIANTS[variant % len(VARIANTS)]
            if rank == 16 and concept_index % RANK_32_EVERY == 0:
                rank = 32
            plans.append(LoraPlan(
                id=f"{attribute}-{concept}-{variant + 1:02d}", kind="object" if attribute == "shape" else "style",
                concept=concept, truth={attribute: concept}, trained_on={attribute: concept}, rank=rank,
                subset=subset, seed=int(rng.integers(1 << 31)), format=next_format(subset, rank), steps_factor=1.0,
                split="heldout" if variant in held_out else "train"))

    # The odd ones: half weak (a tenth of the training: the concept barely shows), half off-concept (named and
    # captioned for one concept, trained on another of the same attribute — a mislabelled upload).
    odd_held_out = set(rng.choice(odd_ones, odd_ones // 4, replace=False).tolist()) if odd_ones else set()
    for index in range(odd_ones):
        concept = concepts[int(rng.integers(len(concepts)))]
        attribute = "shape" if concept in SHAPES else "style"
        rank, subset = VARIANTS[int(rng.integers(len(VARIANTS)))]
        split = "heldout" if index in odd_held_out else "train"
        if index % 2 == 0:
            plans.append(LoraPlan(
                id=f"weak-{concept}-{index + 1:02d}", kind="weak", concept=concept, truth={},
                trained_on={attribute: concept}, rank=rank, subset=subset, seed=int(rng.integers(1 << 31)),
                format=next_format(subset, rank), steps_factor=0.1, split=split))
        else:
            same_attribute = [c for c in concepts if (c in SHAPES) == (concept in SHAPES) and c != concept]
            actual = same_attribute[int(rng.integers(len(same_attribute)))] if same_attribute else concept
            plans.append(LoraPlan(
                id=f"off-{concept}-{index + 1:02d}", kind="off-concept", concept=concept, truth={attribute: actual},
                trained_on={attribute: actual}, rank=rank, subset=subset, seed=int(rng.integers(1 << 31)),
                format=next_format(subset, rank), steps_factor=1.0, split=split))
    return PoolPlan(plans)
