"""Retraining the fusion gates on the pool, and judging a candidate against the gates in service.

`train_candidate` runs eq. 10's interference-resistant training on the bundle's training LoRAs (optionally
starting from existing gates, as a fine-tune). `evaluate_gates` measures gates on the *held-out* LoRAs only, so a
candidate is never judged on what it trained on:

- heldout_loss: flow-matching loss of gated fusion on held-out object + style pairs, on renders of the object in
  the style under a caption naming both (what a user asks of two fused LoRAs), with fixed draws and noise
  (deterministic, continuous: it orders candidates even where accuracy ties). Eq. 10's own data (the target's
  images beside an interferer) is no judge: on it, gates that shut every LoRA out measured *best* (0.264 against
  0.285 for the trained gates), while here they measure worst (0.556 against 0.465);
- both_correct / shape_acc / style_acc: the evaluator's reading of images drawn for held-out pairs (Table 2's
  metric, on fewer pairs and steps).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..fusion import FusionOptions, FusionSession, GateBank, gate_dims
from ..lora.formats import read_lora_file
from .build import composed_sampler, gate_pair_sampler
from .bundle import BundlePaths
from .flow import CaptionCache, flow_loss, noised_batch
from .generate import generate
from .render import prompt_for
from .training import train_gates


def _world(bundle: Path, device: str):
    from ..models import load_backbone

    paths = BundlePaths(bundle)
    if not paths.manifest.exists():
        raise FileNotFoundError(f"{bundle} is not a proving-ground bundle (no manifest.json)")
    import json

    records = json.loads(paths.pool_index.read_text())["loras"]
    backbone = load_backbone("proving-ground", paths.model, device)
    return paths, backbone, records


def _loras(bundle: Path, records: list[dict]):
    return {r["id"]: read_lora_file(bundle / r["file"]) for r in records}


def rated_examples(path: str | Path, size: int) -> list[tuple[list, torch.Tensor, str]]:
    """Users' highly rated generations, from the host's manifest `{"examples": [{"prompt", "images": [png…],
    "loras": [safetensors…]}]}`: (LoRAs, images (N, 3, H, W) in [-1, 1], prompt). Examples whose images are not
    `size` square or whose LoRA files are gone are left out."""
    import json

    from PIL import Image

    from ..errors import InvalidLoraFileError
    from .render import to_tensor

    kept = []
    for example in json.loads(Path(path).read_text()).get("examples", []):
        try:
            pixels = [np.asarray(Image.open(image).convert("RGB")) for image in example["images"]]
            loras = [read_lora_file(file) for file in example["loras"]]
        except (OSError, KeyError, ValueError, InvalidLoraFileError):
            continue
        pixels = [p for p in pixels if p.shape[:2] == (size, size)]
        if pixels and loras and example.get("prompt"):
            kept.append((loras, to_tensor(np.stack(pixels)), str(example["prompt"])))
    return kept


def with_rated(draw_pair, examples: list, share: float):
    """Eq. 10's draws, a `share` of them replaced by a rated generation: its LoRAs fused, its images the target,
    its prompt the caption. What users liked becomes what the gates should reproduce."""
    if not examples or share <= 0:
        return draw_pair

    def draw(rng: np.random.Generator, batch: int):
        if rng.random() >= share:
            return draw_pair(rng, batch)
        loras, images, prompt = examples[int(rng.integers(len(examples)))]
        picks = rng.integers(images.shape[0], size=batch)
        target, interference = loras[0], loras[1] if len(loras) > 1 else loras[0]
        return target, interference, images[torch.from_numpy(picks)], [prompt] * batch, [""] * batch
    return draw


def train_candidate(bundle: str | Path, out: str | Path, *, steps: int, seed: int = 0, init: str | Path | None = None,
                    batch: int = 8, lr: float = 1e-2, device: str = "cpu", examples: str | Path | None = None,
                    examples_share: float = 0.25, progress=print) -> dict:
    """Train gates on the bundle's training object/style LoRAs (and, a share of the steps, on users' highly rated
    generations listed in `examples`) and save them to `out`; returns version, loss and what it trained on."""
    bundle = Path(bundle)
    paths, backbone, records = _world(bundle, device)
    training = [r for r in records if r["split"] == "train" and r["kind"] in ("object", "style")]
    if len(training) < 2:
        raise ValueError(f"{bundle} has {len(training)} training object/style LoRAs; gates need at least two")
    dims = gate_dims(backbone.transformer)
    gates = GateBank.load(init, dims, "proving-ground") if init else GateBank(dims, seed=seed, family="proving-ground")
    history = {"loss": []}
    rated = rated_examples(examples, backbone.spec.default_size) if examples else []
    if rated:
        progress(f"[gates] {len(rated)} highly rated generations join the training data")
    if steps > 0:
        draw = with_rated(gate_pair_sampler(training, _loras(bundle, training)), rated, examples_share)
        history = train_gates(backbone, gates, draw, steps=steps,
                              batch=batch, lr=lr, seed=seed, hinge=False, global_lora=True, progress=progress,
                              log_every=max(1, steps // 4))
    gates.requires_grad_(False)
    version = f"gates-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-s{seed}-{steps}"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    gates.save(out, version=version)
    losses = history.get("loss") or []
    return {"version": version, "steps": steps, "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "train_loras": len(training), "rated_examples": len(rated)}


def evaluate_gates(bundle: str | Path, gates_path: str | Path, *, pairs: int = 6, seeds: tuple[int, ...] = (11, 22),
                   steps: int = 8, loss_batches: int = 6, batch: int = 4, device: str = "cpu", progress=print) -> dict:
    """The metrics a candidate must not be worse on, all on held-out LoRAs (see the module docstring)."""
    from .evaluator import load_evaluator

    bundle = Path(bundle)
    paths, backbone, records = _world(bundle, device)
    gates = GateBank.load(gates_path, gate_dims(backbone.transformer), "proving-ground").to(backbone.device)
    gates.requires_grad_(False)
    held = [r for r in records if r["split"] == "heldout" and r["kind"] in ("object", "style")]
    objects = [r for r in held if r["kind"] == "object"]
    styles = [r for r in held if r["kind"] == "style"]
    if not objects or not styles:
        raise ValueError(f"{bundle} has no held-out object and style LoRAs to evaluate gates on")
    loras = _loras(bundle, held)

    # Held-out loss: the same draws, noise and σ for every candidate.
    draw = composed_sampler(held, loras)
    captions = CaptionCache.for_backbone(backbone)
    options = FusionOptions(strategy="gated", global_lora=True)
    rng = np.random.default_rng([7, 31])
    generator = torch.Generator().manual_seed(7031)
    losses = []
    with torch.no_grad():
        for _ in range(loss_batches):
            target, interference, images, texts, _ = draw(rng, batch)
            noised = noised_batch(backbone, images, generator)
            with FusionSession(backbone.transformer, [target, interference], [1.0, 1.0], options, gates):
                losses.append(float(flow_loss(backbone, noised, captions(texts))))

    # Accuracy on held-out pairs, read by the evaluator.
    evaluator = load_evaluator(paths.evaluator)
    pick = np.random.default_rng([11, 47])
    hits = {"shape": [], "style": [], "both": []}
    for number in range(pairs):
        obj = objects[int(pick.integers(len(objects)))]
        sty = styles[int(pick.integers(len(styles)))]
        shape, style = obj["truth"]["shape"], sty["truth"]["style"]
        prompt = prompt_for(shape=shape, style=style, rng=pick, held_out_template=True)
        images = generate(backbone, prompt, list(seeds), [loras[obj["id"]], loras[sty["id"]]], strategy="gated",
                          gates=gates, steps=steps)
        predicted = evaluator.predict(images)
        for got_shape, got_style in zip(predicted["shape"], predicted["style"]):
            hits["shape"].append(got_shape == shape)
            hits["style"].append(got_style == style)
            hits["both"].append(got_shape == shape and got_style == style)
        progress(f"[gates] eval pair {number + 1}/{pairs}")
    mean = lambda values: float(np.mean(values)) if values else 0.0  # noqa: E731
    return {"version": gates.info.version, "heldout_loss": float(np.mean(losses)), "both_correct": mean(hits["both"]),
            "shape_acc": mean(hits["shape"]), "style_acc": mean(hits["style"]), "pairs": pairs,
            "images": len(hits["both"])}


# --- the LoRA encoder -------------------------------------------------------------------------------------------


def _encoder_examples(bundle: Path, records: list[dict], seed: int, extra: str | Path | None):
    """(LoRA, captions) for the bundle's training LoRAs (their preview captions plus fresh ones naming the concept,
    as the bundle's own encoder was trained) and, from `extra`, crawled LoRAs with the captions their source gave
    ({"examples": [{"lora": path, "captions": [...]}]}); one contrastive group per concept or per crawled LoRA."""
    import json

    from ..errors import InvalidLoraFileError
    from .build import concept_scenes
    from .render import SHAPES, captions, random_scene

    rng = np.random.default_rng([seed, 11])
    examples, groups = [], []
    for record in records:
        if record["split"] != "train":
            continue  # held-out LoRAs never reach the encoder
        lora = read_lora_file(bundle / record["file"])
        lora.name = record["id"]
        shapes, styles = concept_scenes({"shape" if record["concept"] in SHAPES else "style": record["concept"]})
        texts = [preview["caption"] for preview in record["previews"]]
        for _ in range(6):
            texts.extend(captions(random_scene(rng, shapes=shapes, styles=styles), rng, leave_out=False).values())
        examples.append((lora, texts))
        groups.append(record["concept"])
    crawled = 0
    for example in (json.loads(Path(extra).read_text()).get("examples", []) if extra else []):
        texts = [str(text) for text in example.get("captions", []) if str(text).strip()]
        try:
            lora = read_lora_file(example["lora"])
        except (OSError, KeyError, InvalidLoraFileError):
            continue
        if texts and lora.family in (None, "proving-ground"):
            examples.append((lora, texts))
            groups.append(f"crawled:{example['lora']}")
            crawled += 1
    return examples, groups, crawled


def train_encoder_candidate(bundle: str | Path, out: str | Path, *, steps: int, seed: int = 0,
                            init: str | Path | None = None, extra: str | Path | None = None, batch: int = 8,
                            device: str = "cpu", progress=print) -> dict:
    """Train (or fine-tune from `init`) the LoRA encoder on the bundle's training LoRAs and crawled, captioned
    LoRAs from `extra`; saves it to the folder `out`."""
    from ..encoder import LoraEncoder, layer_table, load_encoder, save_encoder, train_encoder

    bundle = Path(bundle)
    paths, backbone, records = _world(bundle, device)
    examples, groups, crawled = _encoder_examples(bundle, records, seed, extra)
    if init:
        encoder = load_encoder(init, model=backbone.transformer, device=device)
        encoder.train().requires_grad_(True)
    else:
        encoder = LoraEncoder(layer_table(backbone.transformer), seed=seed).to(device)
    history = {"loss": []}
    if steps > 0:
        history = train_encoder(encoder, examples, steps=steps, batch=min(batch, len(set(groups))), seed=seed,
                                groups=groups, text_encoder=backbone.text_encoder, progress=progress,
                                log_every=max(1, steps // 4))
    encoder.eval().requires_grad_(False)
    version = f"enc-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-s{seed}-{steps}"
    save_encoder(encoder, out, version, {"train_loras": len(examples), "crawled_loras": crawled})
    losses = history.get("loss") or []
    return {"version": version, "steps": steps, "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "train_loras": len(examples), "crawled_loras": crawled}


def evaluate_encoder(bundle: str | Path, encoder_dir: str | Path, *, queries_per_concept: int = 4, device: str = "cpu") -> dict:
    """Retrieval of held-out LoRAs by held-out prompt templates: recall@1, recall@3 and MRR (the proving ground's
    retrieval benchmark), for one encoder."""
    from .benchmark import concept_of, rank_metrics
    from ..encoder import embed_loras, load_encoder
    from .render import SHAPES

    bundle = Path(bundle)
    paths, backbone, records = _world(bundle, device)
    encoder = load_encoder(encoder_dir, model=backbone.transformer, device=device)
    candidates = [r for r in records if r["split"] == "heldout"]
    truths = [concept_of(r) for r in candidates]
    rng = np.random.default_rng([5, 17])
    queries, wanted = [], []
    for concept in sorted({c for c in truths if c is not None}):
        for _ in range(queries_per_concept):
            queries.append(prompt_for(**({"shape": concept} if concept in SHAPES else {"style": concept}), rng=rng,
                                      held_out_template=True))
            wanted.append(concept)
    relevant = np.array([[truth == concept for truth in truths] for concept in wanted])
    with torch.no_grad():
        text = backbone.text_encoder(queries).pooled.float()
        loras = embed_loras(encoder, [read_lora_file(bundle / r["file"]) for r in candidates]).float()
    recall1, recall3, mrr = rank_metrics((text @ loras.T).cpu().numpy(), relevant)
    return {"version": encoder.version, "recall_at_1": recall1, "recall_at_3": recall3, "mrr": mrr,
            "queries": len(queries), "candidates": len(candidates)}
