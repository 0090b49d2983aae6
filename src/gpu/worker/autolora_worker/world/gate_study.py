"""Why gated fusion wins or loses: gate variants trained side by side, judged on the same held-out pairs.

`python -m autolora_worker bench gate-study` trains each variant below on the bundle's *training* LoRAs and
draws every variant, plus `none`, `direct` and the bundle's own gates, on one fixed set of held-out object +
style pairs and seeds (chosen by a fixed generator before any result is seen). Each row gets its both-correct rate
with a 95% bootstrap interval over pairs and its paired difference from `direct` on the same prompts and seeds.

The variants answer the questions issue [2/6] asks when gated fusion does not beat direct addition:

- ``paper``: eq. 10 as the authors train it: a target LoRA with an interferer of any other concept, gates
  initialised N(0, 1) (so σ ≈ 0.5 on average: every LoRA starts near half strength);
- ``paper+hinge``: the same with the authors' hinge term and caption dropout 0.3;
- ``same-kind``: interferers of the *same* kind (two objects, two styles), the pairs that actually fight over
  the same features;
- ``open-init``: same-kind pairs, but gates start open (σ ≈ 0.95, i.e. as direct addition) with small weights, so
  training only has to learn where to close them;
- layer rows (LAYER_ROWS, no training): direct addition with one LoRA kept to double or to single blocks, to see
  where an object and a style LoRA fight;
- ``composed``: a diagnostic, not the paper's method: an object LoRA and a style LoRA together, trained on renders
  of their *composition* under a caption naming both. It asks whether these gates can represent composition at all
  when shown it; real pools have no such images.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..fusion import GateBank, gate_dims
from ..lora.canonical import CanonicalLora
from .benchmark import _bootstrap, _flat, _mean, held_out_pairs
from .build import composed_sampler, gate_pair_sampler
from .generate import generate
from .render import prompt_for
from .retrain import _loras, _world
from .training import train_gates


@dataclass(frozen=True)
class Variant:
    pairs: str  # "any" | "same-kind" | "composed"
    init: str = "paper"  # "paper": N(0, 1) as the authors; "open": σ ≈ 0.95 with small weights
    hinge: bool = False
    caption_dropout: float = 0.0


VARIANTS = {
    "paper": Variant("any"),
    "paper+hinge": Variant("any", hinge=True, caption_dropout=0.3),
    "same-kind": Variant("same-kind"),
    "open-init": Variant("same-kind", init="open"),
    "composed": Variant("composed", init="open"),
}
# Which layers interfere: direct addition with one of the two LoRAs kept to one kind of block (the other whole).
# If keeping a LoRA out of some blocks saves the other's concept without losing its own, the two fight there.
LAYER_ROWS = {
    "direct, style LoRA in double blocks only": ("style", "transformer_blocks."),
    "direct, style LoRA in single blocks only": ("style", "single_transformer_blocks."),
    "direct, object LoRA in double blocks only": ("object", "transformer_blocks."),
    "direct, object LoRA in single blocks only": ("object", "single_transformer_blocks."),
}
PAIR_SEED = 4242  # the held-out pairs and prompts; fixed before the first study was run
SEEDS = (11, 22, 33, 44)


def open_gates(gates: GateBank, seed: int, bias: float = 3.0, spread: float = 0.1) -> GateBank:
    """Gates that start as direct addition: σ(b) ≈ 0.95 everywhere, gate weights N(0, spread²)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in gates.module_names():
            gate = gates.gate(name)
            for weight in (gate.w_x, gate.w_l, gate.w_c):
                weight.copy_(spread * torch.randn(weight.shape, generator=generator))
            gate.b.fill_(bias)
    return gates


def only_blocks(lora: CanonicalLora, prefix: str) -> CanonicalLora:
    """The LoRA's layers in blocks whose module name starts with `prefix` (the rest dropped)."""
    return CanonicalLora({name: layer for name, layer in lora.layers.items() if name.startswith(prefix)},
                         lora.format, lora.family, list(lora.unknown_keys), lora.sha256, lora.name)


SAMPLERS = {"any": gate_pair_sampler, "same-kind": partial(gate_pair_sampler, same_kind=True),
            "composed": composed_sampler}


def study_pairs(records: list[dict], count: int) -> list[tuple[dict, dict, str]]:
    """(object record, style record, prompt) for `count` held-out pairs, the same for every variant and run."""
    rng = np.random.default_rng(PAIR_SEED)
    pairs = held_out_pairs(records, count, rng)
    if not pairs:
        raise ValueError("the bundle has no held-out object and style LoRAs to study gates on")
    return [(obj, sty, prompt_for(shape=obj["truth"]["shape"], style=sty["truth"]["style"], rng=rng,
                                  held_out_template=True)) for obj, sty in pairs]


def run_gate_study(bundle: str | Path | None = None, *, variants: list[str] | None = None, pairs: int = 24, steps: int = 300,
                   sample_steps: int = 20, batch: int = 8, lr: float = 1e-2, seed: int = 0,
                   seeds: tuple[int, ...] = SEEDS, device: str = "cpu", progress=print) -> dict:
    from .evaluator import load_evaluator

    names = list(VARIANTS) if variants is None else variants
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown gate variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    started = time.monotonic()
    from .bundle import default_bundle_dir

    bundle = Path(bundle) if bundle else default_bundle_dir()
    paths, backbone, records = _world(bundle, device)
    training = [r for r in records if r["split"] == "train" and r["kind"] in ("object", "style")]
    loras = _loras(bundle, [r for r in records if r["kind"] in ("object", "style")])
    evaluator = load_evaluator(paths.evaluator)
    study = study_pairs(records, pairs)
    dims = gate_dims(backbone.transformer)

    rows: dict[str, dict] = {}
    scores: dict[str, list[list[bool]]] = {}

    def judge(name: str, method: str, gates: GateBank | None, keep: tuple[str, str] | None = None) -> None:
        """Draw every study pair under `method`; record both-correct per pair, and shape and style accuracy (which
        of the two concepts a row keeps or loses) in the row."""
        per_pair, shapes, styles = [], [], []
        for obj, sty, prompt in study:
            shape, style = obj["truth"]["shape"], sty["truth"]["style"]
            chosen = [] if method == "none" else [loras[obj["id"]], loras[sty["id"]]]
            if keep is not None:
                which = 0 if keep[0] == "object" else 1
                chosen[which] = only_blocks(chosen[which], keep[1])
                chosen = [lora for lora in chosen if lora.layers]  # a LoRA with no layers there adds nothing
            images = generate(backbone, prompt, list(seeds), chosen, strategy=method, gates=gates, steps=sample_steps)
            predicted = evaluator.predict(images)
            per_pair.append([a == shape and b == style for a, b in zip(predicted["shape"], predicted["style"])])
            shapes += [a == shape for a in predicted["shape"]]
            styles += [b == style for b in predicted["style"]]
        scores[name] = per_pair
        rows.setdefault(name, {}).update(shape_acc=_mean(shapes), style_acc=_mean(styles))
        progress(f"[gate-study] {name}: both-correct {_mean(_flat(per_pair)):.3f} "
                 f"(shape {_mean(shapes):.3f}, style {_mean(styles):.3f})")

    for method in ("none", "direct"):
        judge(method, method, None)
    for name, keep in LAYER_ROWS.items():
        judge(name, "direct", None, keep)
    bundled = GateBank.load(paths.gates, dims, "proving-ground").to(backbone.device).requires_grad_(False)
    judge("bundle gates", "gated", bundled)
    for name in names:
        variant = VARIANTS[name]
        gates = GateBank(dims, seed=seed, family="proving-ground")
        if variant.init == "open":
            open_gates(gates, seed)
        clock = time.monotonic()
        history = train_gates(backbone, gates, SAMPLERS[variant.pairs](training, loras), steps=steps, batch=batch,
                              lr=lr, seed=seed, hinge=variant.hinge, caption_dropout=variant.caption_dropout,
                              global_lora=True, progress=progress, log_every=max(1, steps // 4))
        gates.requires_grad_(False)
        losses = history.get("mse") or history.get("loss") or []
        rows[name] = {"variant": vars(variant), "train_s": round(time.monotonic() - clock, 1),
                      "first_mse": round(float(np.mean(losses[:10])), 5) if losses else None,
                      "last_mse": round(float(np.mean(losses[-10:])), 5) if losses else None}
        judge(name, "gated", gates)

    intervals = np.random.default_rng(7)
    table = {}
    for name, per_pair in scores.items():
        paired = [[float(a) - float(b) for a, b in zip(mine, direct)] for mine, direct in zip(per_pair, scores["direct"])]
        table[name] = {"both_correct": _mean(_flat(per_pair)), "both_correct_ci": _bootstrap(per_pair, intervals),
                       "minus_direct": _mean(_flat(paired)), "minus_direct_ci": _bootstrap(paired, intervals),
                       **rows.get(name, {})}
    detail = [{"object": obj["id"], "style": sty["id"], "prompt": prompt,
               "both_correct": {name: _mean(per_pair[index]) for name, per_pair in scores.items()}}
              for index, (obj, sty, prompt) in enumerate(study)]
    return {"bundle": str(bundle), "pairs": len(study), "seeds": list(seeds), "steps": steps,
            "sample_steps": sample_steps, "seconds": round(time.monotonic() - started, 1), "table": table,
            "detail": detail}


def markdown(report: dict) -> str:
    lines = [f"# Gate study on {report['bundle']}", "",
             f"{report['pairs']} held-out object + style pairs × {len(report['seeds'])} seeds, {report['sample_steps']} "
             f"sampling steps; variants trained {report['steps']} steps; {report['seconds']} s.", "",
             "| row | both-correct | − direct (paired) | shape | style | gate mse first → last |",
             "|---|---|---|---|---|---|"]
    for name, row in report["table"].items():
        low, high = row["both_correct_ci"]
        dlow, dhigh = row["minus_direct_ci"]
        mse = f"{row['first_mse']} → {row['last_mse']}" if row.get("first_mse") is not None else ""
        lines.append(f"| {name} | {row['both_correct']:.3f} [{low:.2f}, {high:.2f}] | "
                     f"{row['minus_direct']:+.3f} [{dlow:+.2f}, {dhigh:+.2f}] | {row['shape_acc']:.3f} | "
                     f"{row['style_acc']:.3f} | {mse} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate-study.json").write_text(json.dumps(report, indent=1))
    (out / "gate-study.md").write_text(markdown(report))
    return out / "gate-study.md"
