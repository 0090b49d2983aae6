"""`python -m autolora_worker bench world`: the paper's tables, repeated on the proving-ground bundle.

Everything is measured on held-out LoRAs (never seen by the encoder or the gates) with prompt templates no
training caption uses, and fixed seeds, so two runs on the same bundle print the same numbers.

- retrieval: recall@1, recall@3 and MRR of the weight encoder, of a caption baseline (the LoRA's preview captions
  embedded by the same text encoder: what Stylus / LoraRetriever-style systems do) and of random ranking;
- table2: "a {shape} in {style} style" with the matching object + style LoRA under each fusion strategy;
- table34: random 2- and 3-LoRA fusions (an object, a style, and for k = 3 a third LoRA the prompt does not name)
  → accuracy on the named attributes and Lᵢ Sim (evaluator-feature cosine to each single-LoRA image, same seed);
- table5: gated with and without the Global LoRA, on the table2 pairs;
- Table 1 (retrieve + fuse against the base model) is measured through the product instead, with the host's own
  retrieval and /imagine: `npm run bench -- quality` (src/bench/quality-bench.ts), scored by this evaluator;
- fig4: cosine heatmap of LoRA embeddings grouped by concept, and mean(intra-concept) − mean(inter-concept);
- gates: the build gates (gates.py) measured again on the bundle: evaluator, base_own, none_lacks and each LoRA alone.

Accuracies of tables 2-5 come with a 95% bootstrap interval (`…_ci`), resampling pairs (or sets), not images:
the four seeds of one pair are not independent draws.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..fusion import GateBank, gate_dims
from ..lora.formats import read_lora_file
from ..models import load_backbone
from ..protocol import FUSIONS
from .bundle import BundlePaths, default_bundle_dir
from .gates import measure_base_own, measure_none_lacks, measure_single_loras
from .generate import generate
from .pool import OBJECT_CONCEPTS, STYLE_CONCEPTS
from .render import BASE_SHAPES, SHAPES, prompt_for

METHODS = FUSIONS  # every strategy a request may name, in the protocol's order


@dataclass(frozen=True)
class BenchSettings:
    queries_per_concept: int
    table2_pairs: int
    table34_sets: int
    seeds: tuple[int, ...]
    steps: int
    # LoRAs measured alone per split for the gates (None: all of them).
    gate_loras: int | None = None


FULL = BenchSettings(queries_per_concept=4, table2_pairs=48, table34_sets=20, seeds=(11, 22, 33, 44),
                     steps=20)
FAST = BenchSettings(queries_per_concept=2, table2_pairs=3, table34_sets=2, seeds=(11, 22), steps=6,
                     gate_loras=3)
BOOTSTRAP_DRAWS = 2000


class World:
    """The loaded bundle: model, gates, evaluator, encoder, text encoder and the pool with its records."""

    def __init__(self, root: Path, device: str = "cpu"):
        from ..encoder import load_encoder
        from .evaluator import load_evaluator

        self.paths = BundlePaths(root)
        if not self.paths.manifest.exists():
            raise FileNotFoundError(f"{root} is not a proving-ground bundle (no manifest.json); "
                                    "build one with `make world`")
        self.manifest = json.loads(self.paths.manifest.read_text())
        self.backbone = load_backbone("proving-ground", self.paths.model, device)
        self.gates = GateBank.load(self.paths.gates, gate_dims(self.backbone.transformer), "proving-ground")
        self.gates.requires_grad_(False)
        self.evaluator = load_evaluator(self.paths.evaluator)
        self.encoder = load_encoder(self.paths.encoder).eval()
        self.records = json.loads(self.paths.pool_index.read_text())["loras"]
        self.loras = {r["id"]: read_lora_file(root / r["file"]) for r in self.records}

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        return self.backbone.text_encoder(texts).pooled.float()

    def lora_embeddings(self, ids: list[str]) -> torch.Tensor:
        from ..encoder import embed_loras

        with torch.no_grad():
            return embed_loras(self.encoder, [self.loras[i] for i in ids]).float()


def concept_of(record: dict) -> str | None:
    truth = record["truth"]
    return truth.get("shape") or truth.get("style")


def rank_metrics(scores: np.ndarray, relevant: np.ndarray) -> tuple[float, float, float]:
    """scores (Q, N), relevant (Q, N) bool → recall@1, recall@3, MRR (first relevant hit)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), scores.shape[1])
    recall1 = float(np.mean(first < 1))
    recall3 = float(np.mean(first < 3))
    mrr = float(np.mean(np.where(first < scores.shape[1], 1.0 / (first + 1), 0.0)))
    return recall1, recall3, mrr


def bench_retrieval(world: World, settings: BenchSettings, rng: np.random.Generator) -> dict:
    candidates = [r for r in world.records if r["split"] == "heldout"]
    ids = [r["id"] for r in candidates]
    truths = [concept_of(r) for r in candidates]
    concepts = sorted({c for c in truths if c is not None})
    queries, query_concepts = [], []
    for concept in concepts:
        for _ in range(settings.queries_per_concept):
            kwargs = {"shape": concept} if concept in SHAPES else {"style": concept}
            queries.append(prompt_for(**kwargs, rng=rng, held_out_template=True))
            query_concepts.append(concept)
    relevant = np.array([[truth == concept for truth in truths] for concept in query_concepts])
    query_vectors = world.text_embeddings(queries)
    encoder_scores = (query_vectors @ world.lora_embeddings(ids).T).numpy()
    caption_vectors = torch.stack([
        F.normalize(world.text_embeddings([p["caption"] for p in r["previews"]]).mean(0), dim=0) for r in candidates])
    caption_scores = (query_vectors @ caption_vectors.T).numpy()
    random_runs = np.array([rank_metrics(rng.random(relevant.shape), relevant) for _ in range(50)]).mean(axis=0)
    result = {}
    for name, metrics in (("encoder", rank_metrics(encoder_scores, relevant)),
                          ("captions", rank_metrics(caption_scores, relevant)), ("random", tuple(random_runs))):
        result[name] = dict(zip(("recall_at_1", "recall_at_3", "mrr"), (round(float(m), 4) for m in metrics)))
    result["queries"], result["candidates"] = len(queries), len(candidates)
    return result


def retrieval_prompts(records: list[dict], split: str, seed: int, per_concept: int = 4) -> dict:
    """Prompts for judging retrieval among one split's LoRAs, in phrasings no training caption used: `per_concept`
    naming each concept alone, and one naming each object + style pair. Each LoRA of the split is listed with its
    concept (None for off-concept ones), so a consumer can tell which retrieved LoRAs are relevant."""
    candidates = [r for r in records if r["split"] == split]
    if not candidates:
        raise ValueError(f"the bundle has no {split} LoRAs")
    rng = np.random.default_rng(seed)
    objects = sorted({r["truth"]["shape"] for r in candidates if r["kind"] == "object"})
    styles = sorted({r["truth"]["style"] for r in candidates if r["kind"] == "style"})
    singles = [{"prompt": prompt_for(**({"shape": c} if c in SHAPES else {"style": c}), rng=rng, held_out_template=True),
                "concepts": [c]} for c in objects + styles for _ in range(per_concept)]
    pairs = [{"prompt": prompt_for(shape=o, style=s, rng=rng, held_out_template=True), "concepts": [o, s]}
             for o in objects for s in styles]
    loras = [{"id": r["id"], "file": r["file"], "kind": r["kind"], "concept": concept_of(r)} for r in candidates]
    return {"split": split, "seed": seed, "singles": singles, "pairs": pairs, "loras": loras}


def held_out_pairs(records: list[dict], count: int, rng: np.random.Generator) -> list[tuple[dict, dict]]:
    """`count` distinct (object, style) pairs of held-out LoRAs, drawn without replacement."""
    objects = [r for r in records if r["split"] == "heldout" and r["kind"] == "object"]
    styles = [r for r in records if r["split"] == "heldout" and r["kind"] == "style"]
    every = [(o, s) for o in objects for s in styles]
    if not every:
        return []
    picks = rng.choice(len(every), size=min(count, len(every)), replace=False)
    return [every[int(i)] for i in picks]


def bench_table2(world: World, settings: BenchSettings, rng: np.random.Generator, progress) -> tuple[dict, dict]:
    pairs = held_out_pairs(world.records, settings.table2_pairs, rng)
    scores = {m: {"shape": [], "style": [], "both": []} for m in (*METHODS, "gated-no-global")}  # per pair: a list
    detail = []  # per pair, for finding out why one method wins or loses (which concepts, which LoRAs)
    for number, (obj, sty) in enumerate(pairs):
        shape, style = obj["truth"]["shape"], sty["truth"]["style"]
        prompt = prompt_for(shape=shape, style=style, rng=rng, held_out_template=True)
        loras = [world.loras[obj["id"]], world.loras[sty["id"]]]
        for method in scores:
            strategy = "gated" if method.startswith("gated") else method
            images = generate(world.backbone, prompt, list(settings.seeds), [] if method == "none" else loras,
                              strategy=strategy, gates=world.gates, global_lora=method != "gated-no-global",
                              steps=settings.steps)
            predicted = world.evaluator.predict(images)
            scores[method]["shape"].append([got == shape for got in predicted["shape"]])
            scores[method]["style"].append([got == style for got in predicted["style"]])
            scores[method]["both"].append([a == shape and b == style for a, b in zip(predicted["shape"], predicted["style"])])
        detail.append({"object": obj["id"], "style": sty["id"], "prompt": prompt,
                       "both_correct": {m: _mean(s["both"][-1]) for m, s in scores.items()}})
        progress(f"[bench] table2 pair {number + 1}/{len(pairs)}: {prompt!r}")
    intervals = np.random.default_rng(7)
    table2 = {m: {"shape_acc": _mean(_flat(s["shape"])), "style_acc": _mean(_flat(s["style"])),
                  "both_correct": _mean(_flat(s["both"])), "shape_acc_ci": _bootstrap(s["shape"], intervals),
                  "style_acc_ci": _bootstrap(s["style"], intervals), "both_correct_ci": _bootstrap(s["both"], intervals)}
              for m, s in scores.items() if m in METHODS}
    # The paper's claim is a difference on the same prompts and seeds: bootstrap it over pairs, not the two
    # intervals apart (which overlap long before a paired difference is in doubt).
    paired = [[g - d for g, d in zip(gated, direct)] for gated, direct in zip(scores["gated"]["both"], scores["direct"]["both"])]
    table5 = {"gated_minus_direct": {"both_correct": _mean(_flat(paired)), "both_correct_ci": _bootstrap(paired, intervals)}}
    without = scores["gated-no-global"]["both"]
    table5 |= {"with_global": {"both_correct": table2["gated"]["both_correct"], "both_correct_ci": table2["gated"]["both_correct_ci"]},
              "without_global": {"both_correct": _mean(_flat(without)), "both_correct_ci": _bootstrap(without, intervals)},
              "pairs": len(pairs), "detail": detail}
    return table2, table5


def bench_table34(world: World, settings: BenchSettings, rng: np.random.Generator, progress) -> dict:
    regular = [r for r in world.records if r["split"] == "heldout" and r["kind"] in ("object", "style")]
    result = {}
    for k in (2, 3):
        scores = {m: {"attr": [], "sim": []} for m in METHODS}
        pairs = held_out_pairs(world.records, settings.table34_sets, rng)
        for number, (obj, sty) in enumerate(pairs):
            chosen = [obj, sty]
            if k == 3:
                # a third concept when the pool has one (a reduced pool may not: then another LoRA of the two)
                extra = ([r for r in regular if concept_of(r) not in (concept_of(obj), concept_of(sty))]
                         or [r for r in regular if r["id"] not in (obj["id"], sty["id"])])
                if not extra:
                    continue
                chosen.append(extra[int(rng.integers(len(extra)))])
            shape, style = obj["truth"]["shape"], sty["truth"]["style"]
            prompt = prompt_for(shape=shape, style=style, rng=rng, held_out_template=True)
            loras = [world.loras[r["id"]] for r in chosen]
            seeds = list(settings.seeds)
            singles = [world.evaluator.features(generate(world.backbone, prompt, seeds, [lora], strategy="direct",
                                                         steps=settings.steps)) for lora in loras]
            for method in METHODS:
                images = generate(world.backbone, prompt, seeds, [] if method == "none" else loras, strategy=method,
                                  gates=world.gates, steps=settings.steps)
                predicted = world.evaluator.predict(images)
                features = world.evaluator.features(images)
                scores[method]["attr"].append([((a == shape) + (b == style)) / 2 for a, b in zip(predicted["shape"], predicted["style"])])
                scores[method]["sim"].append([float(np.mean([float(features[index] @ single[index]) for single in singles]))
                                              for index in range(len(seeds))])
            progress(f"[bench] table34 k={k} set {number + 1}/{len(pairs)}")
        intervals = np.random.default_rng(7 + k)
        result[f"k{k}"] = {m: {"attribute_acc": _mean(_flat(s["attr"])), "attribute_acc_ci": _bootstrap(s["attr"], intervals),
                               "li_sim": _mean(_flat(s["sim"])), "li_sim_ci": _bootstrap(s["sim"], intervals)}
                           for m, s in scores.items()}
    return result


def bench_fig4(world: World, out_dir: Path | None) -> dict:
    regular = sorted((r for r in world.records if r["kind"] in ("object", "style")), key=lambda r: concept_of(r))
    ids = [r["id"] for r in regular]
    concepts = [concept_of(r) for r in regular]
    vectors = world.lora_embeddings(ids)
    cosine = (vectors @ vectors.T).numpy()
    same = np.array([[a == b for b in concepts] for a in concepts])
    off_diagonal = ~np.eye(len(ids), dtype=bool)
    heldout = np.array([r["split"] == "heldout" for r in regular])

    def gap(mask_rows: np.ndarray) -> float:
        pair = mask_rows[:, None] & mask_rows[None, :] & off_diagonal
        return float(cosine[pair & same].mean() - cosine[pair & ~same].mean())

    result = {"gap": round(gap(np.ones(len(ids), dtype=bool)), 4), "gap_heldout": round(gap(heldout), 4),
              "loras": len(ids)}
    if out_dir is not None:
        result["heatmap"] = str(_heatmap(cosine, concepts, out_dir / "fig4-heatmap.png"))
    return result


def _heatmap(cosine: np.ndarray, concepts: list[str], path: Path) -> Path:
    """A PNG of the cosine matrix (blue −1 … white 0 … red 1), 4 px per LoRA, with black lines between concepts."""
    from PIL import Image

    scale = 4
    value = np.clip(cosine, -1, 1)
    red = np.where(value > 0, 1.0, 1.0 + value)
    blue = np.where(value < 0, 1.0, 1.0 - value)
    green = 1.0 - np.abs(value)
    pixels = (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)
    pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    for index in range(1, len(concepts)):
        if concepts[index] != concepts[index - 1]:
            pixels[index * scale, :] = 0
            pixels[:, index * scale] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def bench_gates(world: World, settings: BenchSettings, progress) -> dict:
    """The build gates on the bundle as committed (fixed seeds; see gates.py)."""
    def draw(prompt, seeds, loras):
        return generate(world.backbone, prompt, list(seeds), loras, strategy="direct", steps=settings.steps)

    judge = world.evaluator.predict
    records = [r for r in world.records if r["kind"] in ("object", "style")]
    if settings.gate_loras is not None:
        records = [r for split in ("train", "heldout") for r in [r for r in records if r["split"] == split][:settings.gate_loras]]
    seed = int(world.manifest.get("config", {}).get("seed", 0))
    single = measure_single_loras(draw, judge, records, world.loras, BASE_SHAPES, seed=seed)
    progress("[bench] gates: single LoRAs measured")
    return {
        "base_own": measure_base_own(draw, judge, BASE_SHAPES, ("flat",), seed=seed),
        "none_lacks": measure_none_lacks(draw, judge, OBJECT_CONCEPTS, STYLE_CONCEPTS, seed=seed),
        "single_lora_train": single["single_lora_train"], "single_lora_heldout": single["single_lora_heldout"],
    }


GALLERY_COLUMNS = ("base", "object LoRA", "style LoRA", "direct", "gated")


def bench_gallery(world: World, settings: BenchSettings, path: Path, rows: int = 6, seed: int = 17) -> Path:
    """docs/gallery.png: held-out object + style prompts in rows; the base, each LoRA alone, direct and gated fusion
    in columns (one fixed seed), with the prompt above each row and the evaluator's verdict under each image."""
    from PIL import Image, ImageDraw, ImageFont

    pairs = held_out_pairs(world.records, rows, np.random.default_rng(seed))
    cell, label, heading = 128, 28, 18
    width = cell * len(GALLERY_COLUMNS)
    header = 2 * heading  # the column names, then how to read the verdicts
    canvas = Image.new("RGB", (width, header + len(pairs) * (heading + cell + label)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=11)
    for column, name in enumerate(GALLERY_COLUMNS):
        draw.text((column * cell + 4, 3), name, fill="black", font=font)
    draw.text((4, heading + 3), "under each image, the evaluator's shape and style: + as asked, x not as asked",
              fill="dimgray", font=font)
    rng = np.random.default_rng(seed + 1)
    for row, (obj, sty) in enumerate(pairs):
        shape, style = obj["truth"]["shape"], sty["truth"]["style"]
        prompt = prompt_for(shape=shape, style=style, rng=rng, held_out_template=True)
        top = header + row * (heading + cell + label)
        draw.text((4, top + 3), prompt, fill="black", font=font)
        draw.text((width - 4, top + 3), f"{obj['id']} + {sty['id']}", fill="dimgray", font=font, anchor="ra")
        pair = [world.loras[obj["id"]], world.loras[sty["id"]]]
        runs = (("none", []), ("direct", pair[:1]), ("direct", pair[1:]), ("direct", pair), ("gated", pair))
        for column, (strategy, loras) in enumerate(runs):
            image = generate(world.backbone, prompt, [seed], loras, strategy=strategy, gates=world.gates,
                             steps=settings.steps)
            labels = world.evaluator.predict(image)
            got_shape, got_style = labels["shape"][0], labels["style"][0]
            canvas.paste(Image.fromarray(image[0]).resize((cell, cell), Image.NEAREST), (column * cell, top + heading))
            # "+" right, "x" wrong (Pillow's built-in font has no check marks)
            verdict = f"{'+' if got_shape == shape else 'x'}{got_shape} {'+' if got_style == style else 'x'}{got_style}"
            colour = "darkgreen" if got_shape == shape and got_style == style else "firebrick"
            draw.text((column * cell + 4, top + heading + cell + 6), verdict, fill=colour, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)
    return path


def _mean(values) -> float:
    return round(float(np.mean(values)), 4) if len(values) else float("nan")


def _with_ci(metrics: dict, key: str) -> str:
    low, high = metrics.get(f"{key}_ci", [float("nan")] * 2)
    return f"{metrics[key]:.3f} [{low:.2f}, {high:.2f}]"


def _flat(groups: list[list]) -> list:
    return [value for group in groups for value in group]


def _bootstrap(groups: list[list], rng: np.random.Generator, level: float = 0.95) -> list[float]:
    """A percentile bootstrap interval of the mean, resampling whole groups (a pair's or a set's images)."""
    if not groups:
        return [float("nan"), float("nan")]
    means = np.array([np.mean(group) for group in groups])
    sizes = np.array([len(group) for group in groups])
    draws = rng.integers(len(groups), size=(BOOTSTRAP_DRAWS, len(groups)))
    resampled = (means[draws] * sizes[draws]).sum(1) / sizes[draws].sum(1)
    low, high = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2])
    return [round(float(low), 4), round(float(high), 4)]


def run_world_bench(bundle: str | Path | None = None, fast: bool = False, out_dir: str | Path | None = None,
                    device: str = "cpu", progress=print, gallery: str | Path | None = None) -> dict:
    settings = FAST if fast else FULL
    root = Path(bundle) if bundle else default_bundle_dir()
    out = Path(out_dir) if out_dir else None
    started = time.monotonic()
    world = World(root, device)
    rng = np.random.default_rng(2026)  # fixed: the same bundle gives the same numbers
    from .evaluator import evaluate_accuracy

    evaluator = evaluate_accuracy(world.evaluator, n=200 if fast else 1000, seed=99)
    retrieval = bench_retrieval(world, settings, rng)
    progress(f"[bench] retrieval: {retrieval}")
    table2, table5 = bench_table2(world, settings, rng, progress)
    table34 = bench_table34(world, settings, rng, progress)
    fig4 = bench_fig4(world, out)
    gates = {"evaluator": evaluator, **bench_gates(world, settings, progress)}
    summary = {
        "retrieval": {name: retrieval[name] for name in ("encoder", "captions", "random")},
        "table2": table2,
        "table2_gated_minus_direct": table5["gated_minus_direct"],
        "table34": table34,
        "table5": {name: table5[name] for name in ("with_global", "without_global")},
        "fig4": {"gap": fig4["gap"], "gap_heldout": fig4["gap_heldout"]},
        "evaluator": evaluator,
        "gates": gates,
    }
    report = {
        "bundle": str(root), "versions": world.manifest.get("versions"), "fast": fast, "device": device,
        "settings": settings.__dict__ | {"seeds": list(settings.seeds)},
        "pool": {"loras": len(world.records), "heldout": sum(r["split"] == "heldout" for r in world.records)},
        "retrieval_detail": {k: retrieval[k] for k in ("queries", "candidates")}, "table5_pairs": table5["pairs"], "table2_detail": table5["detail"],
        "fig4_detail": fig4, "seconds": round(time.monotonic() - started, 1), "summary": summary,
    }
    if gallery is not None:
        report["gallery"] = str(bench_gallery(world, settings, Path(gallery)))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench-world.json").write_text(json.dumps(report, indent=1))
        (out / "bench-world.md").write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    s = report["summary"]
    lines = [f"# bench world ({'fast' if report['fast'] else 'full'}) on {report['bundle']}", "",
             f"versions {report['versions']}; pool {report['pool']}; {report['seconds']} s on {report['device']}", "",
             "## Retrieval (held-out LoRAs, unseen prompt templates)", "", "| method | R@1 | R@3 | MRR |", "|---|---|---|---|"]
    for name, m in s["retrieval"].items():
        lines.append(f"| {name} | {m['recall_at_1']:.3f} | {m['recall_at_3']:.3f} | {m['mrr']:.3f} |")
    lines += ["", "## Table 2: object + style LoRA (95% bootstrap intervals over pairs)", "",
              "| method | shape acc | style acc | both |", "|---|---|---|---|"]
    for name, m in s["table2"].items():
        lines.append(f"| {name} | {_with_ci(m, 'shape_acc')} | {_with_ci(m, 'style_acc')} | {_with_ci(m, 'both_correct')} |")
    lines += ["", f"gated − direct, both-correct, paired over the same prompts and seeds: "
              f"{_with_ci(s['table2_gated_minus_direct'], 'both_correct')}"]
    lines += ["", "## Tables 3-4: random fusions", "", "| method | k=2 attr | k=2 Lᵢ Sim | k=3 attr | k=3 Lᵢ Sim |",
              "|---|---|---|---|---|"]
    for name in METHODS:
        a, b = s["table34"]["k2"][name], s["table34"]["k3"][name]
        lines.append(f"| {name} | {_with_ci(a, 'attribute_acc')} | {a['li_sim']:.3f} | {_with_ci(b, 'attribute_acc')} | {b['li_sim']:.3f} |")
    lines += ["", "## Table 5: Global LoRA", "",
              f"with {_with_ci(s['table5']['with_global'], 'both_correct')}, without {_with_ci(s['table5']['without_global'], 'both_correct')}"
              " (both-correct)",
              "", f"## Figure 4: intra − inter concept cosine gap {s['fig4']['gap']:.3f} (held-out only {s['fig4']['gap_heldout']:.3f})",
              "", f"## Evaluator on clean renders: {s['evaluator']}", "", "## Build gates, measured on this bundle", ""]
    for name, values in s["gates"].items():
        lines.append(f"- {name}: " + ", ".join(f"{key} {value}" for key, value in values.items()))
    lines.append("")
    return "\n".join(lines)
