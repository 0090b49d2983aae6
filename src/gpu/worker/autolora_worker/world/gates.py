"""The build gates: what a proving-ground world must show before its bundle is published.

A world is only useful if its model can draw (DESIGN.md, lesson of milestone 1). So after each stage the build
measures, with fixed seeds and prompt templates no training caption uses:

- evaluator: the judge names shape, style and colour of clean held-out renders;
- autoencoder (worlds with one): the judge still names shape and every style on its reconstructions — a style the
  codec cannot carry can never be drawn;
- base_own: the base model draws the concepts it was taught by name (its shapes and colours, flat);
- none_lacks: the base without LoRAs still lacks the pool's concepts (object + style prompts, both-correct);
- single_lora_train / single_lora_heldout: each regular LoRA alone draws its concept, the median over the training
  and over the held-out LoRAs (weak and off-concept LoRAs are measured but reported apart).

A gate is a set of bounds on named values; `check` says which were missed, by how much.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .render import COLOURS, SHAPES, STYLES, prompt_for

# (metric, "min" | "max", bound) per gate: the thresholds ([2/6] "Pictures that show what was asked").
THRESHOLDS: dict[str, tuple[tuple[str, str, float], ...]] = {
    "evaluator": (("shape_acc", "min", 0.97), ("style_acc", "min", 0.97), ("color_acc", "min", 0.97)),
    "autoencoder": (("shape_acc", "min", 0.95), ("worst_style_acc", "min", 0.95)),
    "base_own": (("shape_acc", "min", 0.90), ("colour_acc", "min", 0.95)),
    "none_lacks": (("both_correct", "max", 0.10),),
    "single_lora_train": (("median", "min", 0.85),),
    "single_lora_heldout": (("median", "min", 0.80),),
}
GATE_NAMES = tuple(THRESHOLDS)

# Fixed sample seeds of every gate measurement (chosen before any world was built, never tuned).
GATE_SEEDS = (101, 202, 303, 404)


@dataclass
class GateResult:
    name: str
    values: dict
    missed: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.missed


def check(name: str, values: dict) -> GateResult:
    """Compare `values` with the gate's bounds; a missing value counts as missed."""
    result = GateResult(name, values)
    for metric, kind, bound in THRESHOLDS[name]:
        value = values.get(metric)
        if value is None or not np.isfinite(value):
            result.missed.append(f"{name}.{metric} was not measured")
        elif (kind == "min" and value < bound) or (kind == "max" and value > bound):
            relation = "below the minimum" if kind == "min" else "above the maximum"
            result.missed.append(f"{name}.{metric} = {value:.3f}, {relation} {bound:.2f}")
    return result


class WorldGateError(RuntimeError):
    """A build stage's gate was missed: the bundle is not published (unless the build runs with --below-gates)."""

    def __init__(self, result: GateResult):
        super().__init__(f"world gate {result.name} missed: {'; '.join(result.missed)}. The bundle was not published; "
                         "fix the world and resume (`world build --resume`), or publish it anyway with --below-gates")
        self.result = result


# --- measurements ------------------------------------------------------------------------------------------------
# `draw(prompt, seeds, loras)` -> (len(seeds), 64, 64, 3) uint8 images; `judge(images)` -> the evaluator's labels,
# {"shape": [...], "style": [...], "colour": [...]}. Passing these in keeps the gates free of any one world design.
Draw = Callable[[str, Sequence[int], list], np.ndarray]
Judge = Callable[[np.ndarray], dict[str, list[str]]]


def _mean(flags: list[bool]) -> float:
    return round(float(np.mean(flags)), 4) if flags else float("nan")


def measure_base_own(draw: Draw, judge: Judge, shapes: Sequence[str], styles: Sequence[str], seed: int = 0) -> dict:
    """Every known shape × colour, in each known style, prompted with held-out templates, one image per gate seed."""
    rng = np.random.default_rng([seed, 0xBA5E])
    shape_hits, colour_hits = [], []
    for shape in shapes:
        for colour in COLOURS:
            for style in styles:
                labels = judge(draw(prompt_for(shape=shape, style=style, colour=colour, rng=rng, held_out_template=True),
                                    GATE_SEEDS, []))
                shape_hits += [got == shape for got in labels["shape"]]
                colour_hits += [got == colour for got in labels["colour"]]
    return {"shape_acc": _mean(shape_hits), "colour_acc": _mean(colour_hits), "images": len(shape_hits)}


def measure_none_lacks(draw: Draw, judge: Judge, objects: Sequence[str], styles: Sequence[str], pairs: int = 12,
                       seed: int = 0) -> dict:
    """Object + style prompts of the pool's concepts, drawn by the base alone: how often both come out anyway."""
    rng = np.random.default_rng([seed, 0x0707])
    every = [(shape, style) for shape in objects for style in styles]
    if not every:
        return {"both_correct": float("nan"), "images": 0}
    chosen = [every[int(i)] for i in rng.choice(len(every), size=min(pairs, len(every)), replace=False)]
    hits = []
    for shape, style in chosen:
        labels = judge(draw(prompt_for(shape=shape, style=style, rng=rng, held_out_template=True), GATE_SEEDS, []))
        hits += [got_shape == shape and got_style == style for got_shape, got_style in zip(labels["shape"], labels["style"])]
    return {"both_correct": _mean(hits), "images": len(hits)}


def single_lora_prompt(record: dict, rng: np.random.Generator, base_shapes: Sequence[str]) -> tuple[str, str, str]:
    """(prompt, head, expected label) for a LoRA alone: an object LoRA's shape, or a base shape in a style LoRA's
    style, with a random colour, in a held-out template. What is expected is what its name claims."""
    concept = record["concept"]
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    if concept in SHAPES:
        return prompt_for(shape=concept, colour=colour, rng=rng, held_out_template=True), "shape", concept
    shape = base_shapes[int(rng.integers(len(base_shapes)))]
    return prompt_for(shape=shape, style=concept, colour=colour, rng=rng, held_out_template=True), "style", concept


def measure_single_loras(draw: Draw, judge: Judge, records: Sequence[dict], loras: dict, base_shapes: Sequence[str],
                         seed: int = 0) -> dict:
    """Each LoRA alone, its concept prompted, one image per gate seed: the accuracy on what it claims to teach.
    Returns the medians over regular training and held-out LoRAs, and the weak / off-concept ones apart."""
    rng = np.random.default_rng([seed, 0x51])
    per_lora = {}
    for record in records:
        prompt, head, expected = single_lora_prompt(record, rng, base_shapes)
        labels = judge(draw(prompt, GATE_SEEDS, [loras[record["id"]]]))
        per_lora[record["id"]] = _mean([got == expected for got in labels[head]])

    def summary(split: str) -> dict:
        values = [per_lora[r["id"]] for r in records if r["split"] == split and r["kind"] in ("object", "style")]
        return {"median": round(float(np.median(values)), 4) if values else float("nan"), "loras": len(values),
                "worst": round(float(min(values)), 4) if values else float("nan")}

    odd = {r["id"]: per_lora[r["id"]] for r in records if r["kind"] not in ("object", "style")}
    return {"single_lora_train": summary("train"), "single_lora_heldout": summary("heldout"),
            "odd_ones": {"mean": _mean(list(odd.values())) if odd else float("nan"), "loras": len(odd)},
            "per_lora": per_lora}


def measure_codec(round_trip: Callable[[np.ndarray], np.ndarray], judge: Judge, render_scenes, per_style: int = 48,
                  seed: int = 0) -> dict:
    """The evaluator on the codec's reconstructions of held-out renders: shape accuracy, and style accuracy per
    style (its worst is the gate). `render_scenes(rng, style, count)` -> (scenes, images)."""
    rng = np.random.default_rng([seed, 0xAE])
    shape_hits, per_style_acc = [], {}
    for style in STYLES:
        scenes, images = render_scenes(rng, style, per_style)
        labels = judge(round_trip(images))
        shape_hits += [got == scene.shape for got, scene in zip(labels["shape"], scenes)]
        per_style_acc[style] = _mean([got == style for got in labels["style"]])
    return {"shape_acc": _mean(shape_hits), "worst_style_acc": min(per_style_acc.values()), "per_style": per_style_acc}
