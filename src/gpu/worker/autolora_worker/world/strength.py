"""Each pool LoRA's strength, set as its maker sets it: community LoRAs come with a recommended weight, found by
trying a few on the maker's own prompts. Here the maker tries `strengths` in turn on prompts in the training
captions' phrasings (never the held-out templates the gates and benchmarks use), with seeds of its own, and keeps
the weakest that draws its concept about as well as the best; the factor is folded into the file's up-projections.

Why: trained at strength 1, many style LoRAs had learned their texture's direction but not its full amplitude
(a diagnostic on the 2026-12-02 bundle: gradient LoRAs alone drew a gradient in 0.25-0.5 of images at 1.0 and
0.75-1.0 at 1.5; wavy 0.25-0.75 and 1.0). Deliberately weak and mislabelled LoRAs stand for careless makers and
stay as they were trained.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..lora.canonical import LoraLayer
from .render import COLOURS, SHAPES, prompt_for

# Sample seeds of the calibration: apart from the gates' GATE_SEEDS, fixed before any calibration ran.
STRENGTH_SEEDS = (505, 606, 707, 808)
# `draw_at(prompt, seeds, strength)` -> images of the LoRA at that strength; `judge(images)` -> the evaluator's labels.
DrawAt = Callable[[str, Sequence[int], float], np.ndarray]
Judge = Callable[[np.ndarray], dict[str, list[str]]]


def maker_prompts(concept: str, count: int, rng: np.random.Generator, base_shapes: Sequence[str]) -> list[str]:
    """Prompts a maker would try: the concept named in a training caption's phrasing, a random colour, and for a
    style one of the shapes the base model knows."""
    prompts = []
    for _ in range(count):
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        if concept in SHAPES:
            prompts.append(prompt_for(shape=concept, colour=colour, rng=rng))
        else:
            shape = base_shapes[int(rng.integers(len(base_shapes)))]
            prompts.append(prompt_for(shape=shape, style=concept, colour=colour, rng=rng))
    return prompts


def choose_strength(draw_at: DrawAt, judge: Judge, concept: str, strengths: Sequence[float], prompts: Sequence[str],
                    tolerance: float = 0.125) -> tuple[float, dict[str, float]]:
    """The weakest of `strengths` at which the LoRA draws `concept` on `prompts` × STRENGTH_SEEDS within `tolerance`
    of the best (one image in eight by default: a stronger LoRA interferes more when fused, so one image is not
    worth it), and the accuracy at each strength tried. Stops at the first strength that is always right."""
    head = "shape" if concept in SHAPES else "style"
    scores: dict[float, float] = {}
    for strength in sorted(strengths):
        hits = [got == concept for prompt in prompts for got in judge(draw_at(prompt, STRENGTH_SEEDS, strength))[head]]
        scores[strength] = float(np.mean(hits))
        if scores[strength] == 1.0:
            break
    best = max(scores.values())
    chosen = min(strength for strength, score in scores.items() if score >= best - tolerance - 1e-9)
    return chosen, {f"{strength:g}": round(score, 4) for strength, score in scores.items()}


def strengthened(layers: dict[str, LoraLayer], strength: float) -> dict[str, LoraLayer]:
    """The layers with `strength` folded into each up-projection (in float, stored back in the factors' dtype), so
    every file format carries it and a reader needs no new field."""
    return {name: LoraLayer(layer.down, (layer.up.float() * strength).to(layer.up.dtype), layer.scale)
            for name, layer in layers.items()}
