"""`python -m autolora_worker world build`: the proving-ground bundle from nothing, stage by stage.

autoencoder → evaluator → base model → base gates → LoRA pool → previews → single LoRAs → LoRA encoder → gates →
manifest. Every stage writes into a work folder and leaves a marker when done, and the trainers checkpoint as they
go, so an interrupted build resumes where it stopped (`--resume`). The finished bundle replaces the target folder only at the very end: a
failed build never leaves a half-written bundle behind.

`--redo STAGE` rebuilds only the named stages of an existing bundle (e.g. the LoRA encoder after its settings
changed), keeping every other stage's files and facts; it refuses when a setting of a kept stage differs from the one
the bundle was built with.

After the evaluator, the base-gates and the single-LoRA stages the build gates (gates.py) are checked: a full build that
misses one stops there, naming the gate and the value, and publishes nothing unless it runs with `--below-gates`,
which records every missed gate in the manifest and the bundle's README. The CI preset measures the same values
and reports them without thresholds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..autoencoder import AutoencoderConfig, load_autoencoder, save_autoencoder
from ..fusion import GateBank, gate_dims
from ..lora.canonical import CanonicalLora, LoraLayer
from ..lora.formats import read_lora_file, write_lora_file
from ..models import load_backbone, random_proving_ground, save_proving_ground
from .bundle import BundlePaths
from .gates import (GATE_NAMES, THRESHOLDS, GateResult, WorldGateError, check, measure_base_own, measure_codec,
                    measure_none_lacks, measure_single_loras)
from .generate import generate
from .pool import OBJECT_CONCEPTS, STYLE_CONCEPTS, PoolPlan, plan_pool, subset_modules
from .render import BASE_SHAPES, CENTRED, SHAPES, STYLES, captions, random_scene, render_batch, to_tensor

Progress = Callable[[str], None]
# Training captions: the short and medium forms. The long form names size, position and background too, so
# nearly every long caption is new, and encoding a new caption costs a CPU about as much as a training step.
TRAINING_CAPTIONS = ("text_short", "text_medium")
BUNDLE_FORMAT_VERSION = 1
STRENGTH_KEY = "autolora_world_strength"  # a pool file's header: the strength folded into it (strength.py)


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    evaluator_steps: int = 2000  # 1500 gave shape 0.966-0.977 on held-out renders, at the gate's 0.97
    evaluator_batch: int = 64
    # The autoencoder the base model draws in (0 steps: pixel patches instead, as the first worlds had).
    autoencoder_steps: int = 800
    autoencoder_batch: int = 32
    autoencoder_lr: float = 2e-3
    latent_channels: int = 8
    autoencoder_width: int = 32
    autoencoder_texture: float = 1.0  # weight of train_autoencoder's fine-texture term (grain, dots, block edges)
    # The base learns three shapes, flat, in the autoencoder's latent (alone, 1500 steps at batch 32 drew them with
    # shape 0.94 and colour 1.00 on held-out templates). With `base_draws_all` it also learns to draw every shape and
    # style, but its captions name only the base shapes and flat (the rest are "an object", "patterned"): a LoRA
    # then teaches a name for a look the model can already draw, as most real LoRAs do, and the none_lacks gate
    # checks that the names stay unknown. Part of each batch stays the named base scenes: drawn uniformly from all
    # 12 shapes, "circle" came out as squares and base_own shape fell to 0.66; with half of each batch 0.82, with
    # 0.6 of it 0.958 (full build) and 0.97 (trial), with 0.7 0.99, but then training LoRAs alone fell to a median 0.75.
    base_draws_all: bool = True
    base_named_share: float = 0.6
    base_steps: int = 1500
    base_batch: int = 32
    base_lr: float = 2e-3
    base_caption_dropout: float = 0.1  # teaches the empty-prompt velocity that the family's true_cfg guides against
    # A style LoRA gets `style_lora_steps`: a texture is slower to learn than a silhouette (trial on a base that had
    # never drawn one, rank 4: stripes 0.08 after 100 steps, 0.58 after 300). 150 / 300 rather than 100 / 200 cost
    # the pool stage 15 more minutes; checkered and gradient LoRAs still score 0 alone.
    lora_steps: int = 150
    style_lora_steps: int = 300
    lora_batch: int = 8
    lora_lr: float = 1e-2
    # Strengths a maker tries for each regular LoRA (strength.py); the weakest that draws its concept best is folded
    # into the file. (1.0,) leaves every LoRA as trained.
    lora_strengths: tuple = (1.0, 1.5, 2.0)
    strength_prompts: int = 2
    pool_workers: int = 2  # processes training LoRAs side by side on a CPU (1: in the build's own process)
    # The encoder overfit its 81 training LoRAs at 1500 steps: held-out heart LoRAs met "heart" at cosine 0.21-0.25
    # where training ones met their word at 0.42-0.69, and a concept's held-out variants often adapt a layer subset
    # its training LoRAs did not (heart: all linears, rank 32). Chosen by 4-fold cross-validation over the training
    # LoRAs only (each fold holds out one LoRA per concept; the encoder trains on the rest; the retrieval prompts of
    # seed 101 rank the held-out fold), as r@1 / pairs with both concepts in the plain top 3:
    #   1500 steps, no dropout (fold 0 alone) 0.903 / 0.741;  750 steps 0.962 / 0.871;
    #   750 + layer-type dropout 0.3: 0.986 / 0.945;  0.5: 0.997 / 0.957;  layer 0.5 + type 0.2: 0.986 / 0.945.
    encoder_steps: int = 750
    encoder_batch: int = 16
    encoder_layer_dropout: float = 0.0
    encoder_kind_dropout: float = 0.5
    gate_steps: int = 300
    gate_batch: int = 8
    gate_lr: float = 1e-2
    # Gate variants to train (gate_study.VARIANTS: the paper's eq. 10, with the hinge, and gates that start open on
    # same-kind pairs, the best of them in the gate study); the one that scores best on training LoRAs is kept.
    gate_variants: tuple = ("paper", "paper+hinge", "open-init")
    gate_validation_pairs: int = 6
    concepts: tuple | None = None  # None: every concept the base lacks
    variants_per_concept: int = 6  # the first six of pool.VARIANTS: 18 × 6 + 12 odd ones = 120 LoRAs
    odd_ones: int = 12
    previews_per_lora: int = 1
    sample_steps: int = 20
    # Stop at a missed build gate (gates.py). The CI preset measures every gate but holds no world to them.
    enforce_gates: bool = True


# The stages in build order, and the settings each one alone reads (what `--redo` may change).
STAGES = ("autoencoder", "evaluator", "base", "base-gates", "pool", "strength", "previews", "single-loras", "encoder",
          "gates")
STAGE_FIELDS = {
    "encoder": ("encoder_steps", "encoder_batch", "encoder_layer_dropout", "encoder_kind_dropout"),
    "gates": ("gate_steps", "gate_batch", "gate_lr", "gate_variants", "gate_validation_pairs"),
}


PRESETS = {
    "full": WorldConfig(),
    # CI's reduced build: every stage, a few concepts, a few LoRAs, a few steps.
    "ci": WorldConfig(evaluator_steps=40, evaluator_batch=32, autoencoder_steps=20, autoencoder_batch=8,
                      latent_channels=4, autoencoder_width=8, base_steps=30, base_batch=8, lora_steps=8, style_lora_steps=8,
                      lora_batch=4, encoder_steps=20, encoder_batch=2, gate_steps=6, gate_batch=2,
                      gate_validation_pairs=1, concepts=("hexagon", "striped"), variants_per_concept=3, odd_ones=2,
                      previews_per_lora=1, sample_steps=4, enforce_gates=False),
}


def scene_sampler(shapes: tuple[str, ...], styles: tuple[str, ...], unnamed: frozenset[str] = frozenset()):
    """A trainer's data: fresh renders of random scenes of these shapes and styles (all colours), captioned, in the
    world's layout (one centred shape). Captions never name what is in `unnamed` (see `render.captions`)."""
    def draw(rng: np.random.Generator, batch: int) -> tuple[torch.Tensor, list[str]]:
        scenes = [random_scene(rng, shapes=shapes, styles=styles, layout=CENTRED) for _ in range(batch)]
        texts = [captions(scene, rng, unnamed=unnamed)[TRAINING_CAPTIONS[int(rng.integers(len(TRAINING_CAPTIONS)))]]
                 for scene in scenes]
        return to_tensor(render_batch(scenes)), texts
    return draw


def mixture(first, second, share: float):
    """A sampler whose batches are `share` of `first`'s draws followed by the rest of `second`'s."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"mixture share must be in [0, 1], got {share}")

    def draw(rng: np.random.Generator, batch: int) -> tuple[torch.Tensor, list[str]]:
        count = int(round(batch * share))
        parts = [part(rng, size) for part, size in ((first, count), (second, batch - count)) if size > 0]
        return torch.cat([images for images, _ in parts]), [text for _, texts in parts for text in texts]
    return draw


def concept_scenes(concept: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The shapes and styles of a LoRA's training images: an object LoRA sees its shape, flat; a style LoRA sees
    the base shapes in its style."""
    if "shape" in concept:
        return (concept["shape"],), ("flat",)
    return BASE_SHAPES, (concept["style"],)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class WorldBuild:
    def __init__(self, config: WorldConfig, out: Path, work: Path, device: str = "cpu", progress: Progress = print,
                 below_gates: bool = False):
        self.config, self.out, self.work = config, Path(out), Path(work)
        self.below_gates = below_gates
        self.gates: dict[str, GateResult] = {}
        self.device = device
        self.progress = progress
        self.stage_dir = self.work / "bundle"
        self.paths = BundlePaths(self.stage_dir)
        self.timings: dict[str, float] = {}
        self.facts: dict[str, object] = {}
        self.plan: PoolPlan = plan_pool(config.seed, config.concepts, config.variants_per_concept, config.odd_ones)

    # --- stage bookkeeping -------------------------------------------------------------------------------------

    def _done(self, stage: str) -> Path:
        return self.work / f"{stage}.done.json"

    def run_stage(self, stage: str, body: Callable[[], dict | None]) -> None:
        marker = self._done(stage)
        if marker.exists():
            record = json.loads(marker.read_text())
            self.timings[stage] = record["seconds"]
            self.facts.update(record.get("facts", {}))
            self.progress(f"[world] {stage}: already built ({record['seconds']:.0f} s), skipping")
            return
        self.progress(f"[world] {stage}: building")
        started = time.monotonic()
        facts = body() or {}
        seconds = time.monotonic() - started
        self.timings[stage] = seconds
        self.facts.update(facts)
        marker.write_text(json.dumps({"seconds": seconds, "facts": facts}))
        self.progress(f"[world] {stage}: done in {seconds:.0f} s")

    def keep_stages_of(self, bundle: Path, redo: tuple[str, ...]) -> None:
        """Stage the existing `bundle` and mark every stage but `redo` as built from its manifest, so that the build
        reruns only `redo` (their facts replace the old ones) and republishes."""
        unknown = sorted(set(redo) - set(STAGES))
        if unknown:
            raise ValueError(f"--redo: unknown stage {', '.join(unknown)}; stages: {', '.join(STAGES)}")
        manifest_path = BundlePaths(bundle).manifest
        if not manifest_path.exists():
            raise FileNotFoundError(f"{bundle} has no manifest.json: there is no built bundle to redo stages of")
        manifest = json.loads(manifest_path.read_text())
        built_with, now = manifest["config"], json.loads(json.dumps(asdict(self.config)))
        redone_fields = {field for stage in redo for field in STAGE_FIELDS.get(stage, ())}
        changed = sorted(key for key in now if now[key] != built_with.get(key, now[key]) and key not in redone_fields)
        if changed:
            raise ValueError(f"--redo {','.join(redo)}: settings of kept stages differ from the bundle's ({', '.join(changed)}); "
                             "rebuild those stages too, or the whole bundle")
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        shutil.copytree(bundle, self.stage_dir)
        kept = [stage for stage in STAGES if stage not in redo and stage in manifest["timings_s"]]
        for index, stage in enumerate(kept):
            facts = manifest["facts"] if index == 0 else {}  # all old facts once; redone stages overwrite theirs
            self._done(stage).write_text(json.dumps({"seconds": manifest["timings_s"][stage], "facts": facts}))

    def build(self) -> Path:
        self.work.mkdir(parents=True, exist_ok=True)
        if not self.stage_dir.exists():
            # The staged bundle was published (or never made): stage markers without their outputs mean nothing.
            for marker in self.work.glob("*.done.json"):
                marker.unlink()
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.config.seed)
        # The autoencoder first: the evaluator learns to read its decoder's hand as well as clean renders.
        if self.config.autoencoder_steps > 0:
            self.run_stage("autoencoder", self.build_autoencoder)
        self.run_stage("evaluator", self.build_evaluator)
        self.gate("evaluator", self.facts["evaluator"])
        if self.config.autoencoder_steps > 0:
            self.gate("autoencoder", self.facts["gate_autoencoder"])
        self.run_stage("base", self.build_base)
        # Measured apart from training, so that a new evaluator re-gates the base without retraining it.
        self.run_stage("base-gates", self.measure_base)
        self.gate("base_own", self.facts["gate_base_own"])
        self.gate("none_lacks", self.facts["gate_none_lacks"])
        self.run_stage("pool", self.build_pool)
        self.run_stage("strength", self.calibrate_strengths)
        self.run_stage("previews", self.build_previews)
        self.run_stage("single-loras", self.measure_single_loras)
        self.gate("single_lora_train", self.facts["gate_single_loras"]["single_lora_train"])
        self.gate("single_lora_heldout", self.facts["gate_single_loras"]["single_lora_heldout"])
        self.run_stage("encoder", self.build_encoder)
        self.run_stage("gates", self.build_gates)
        self.write_manifest()
        return self.publish()

    def gate(self, name: str, values: dict) -> None:
        """Check a build gate; a missed one stops an enforcing build (unless --below-gates) before anything is
        published. Its stage stays built: `--resume` re-checks it without redoing the work."""
        result = check(name, values)
        self.gates[name] = result
        shown = {key: value for key, value in values.items() if not isinstance(value, (dict, list))}
        verdict = "passed" if result.passed else f"MISSED ({'; '.join(result.missed)})"
        self.progress(f"[world] gate {name}: {shown} {verdict if self.config.enforce_gates else '(not enforced)'}")
        if not result.passed and self.config.enforce_gates and not self.below_gates:
            raise WorldGateError(result)

    def drawer(self, backbone):
        """The gates' `draw(prompt, seeds, loras)`: direct fusion (the LoRA alone, or nothing) at the build's steps."""
        return lambda prompt, seeds, loras: generate(backbone, prompt, list(seeds), loras, strategy="direct",
                                                     steps=self.config.sample_steps)

    # --- stages ------------------------------------------------------------------------------------------------

    def build_evaluator(self) -> dict:
        """The judge, trained on clean renders and, in a latent world, on as many of them drawn back by the
        autoencoder's decoder; gated on clean held-out renders, and the autoencoder gated on what it still
        recognises in reconstructions of held-out renders."""
        from .evaluator import evaluate_accuracy, save_evaluator, train_evaluator

        c = self.config
        autoencoder = load_autoencoder(self.work / "autoencoder") if c.autoencoder_steps > 0 else None

        def round_trip(images: torch.Tensor) -> torch.Tensor:
            return autoencoder.decode(autoencoder.encode(images))

        evaluator = train_evaluator(seed=c.seed, steps=c.evaluator_steps, batch=c.evaluator_batch,
                                    progress=self.progress, device=self.device,
                                    round_trip=round_trip if autoencoder is not None else None)
        accuracy = evaluate_accuracy(evaluator, seed=c.seed + 1)
        save_evaluator(evaluator, self.paths.evaluator, accuracy=accuracy)
        self.progress(f"[world] evaluator accuracy on clean held-out renders: {accuracy}")
        if autoencoder is None:
            return {"evaluator": accuracy}

        def held_out(rng: np.random.Generator, style: str, count: int):
            scenes = [random_scene(rng, styles=(style,), layout=CENTRED) for _ in range(count)]
            return scenes, render_batch(scenes)

        def decoded(images: np.ndarray) -> np.ndarray:
            from ..models import to_uint8

            with torch.no_grad():
                return to_uint8(round_trip(to_tensor(images)))

        gate = measure_codec(decoded, evaluator.predict, held_out, per_style=48 if c.enforce_gates else 8, seed=c.seed)
        return {"evaluator": accuracy, "gate_autoencoder": gate}

    def build_autoencoder(self) -> dict:
        """The latent the base draws in, trained on renders of every concept (a VAE knows no concepts, only images).
        It is gated in the evaluator stage, by what the evaluator recognises in its reconstructions."""
        from .training import train_autoencoder

        c = self.config
        config = AutoencoderConfig(latent_channels=c.latent_channels, width=c.autoencoder_width)

        def draw(rng: np.random.Generator, batch: int) -> torch.Tensor:
            return to_tensor(render_batch([random_scene(rng, layout=CENTRED) for _ in range(batch)]))

        autoencoder, history = train_autoencoder(config, draw, steps=c.autoencoder_steps, batch=c.autoencoder_batch,
                                                 lr=c.autoencoder_lr, seed=c.seed, texture_weight=c.autoencoder_texture,
                                                 checkpoint_dir=self.work / "autoencoder-checkpoint",
                                                 resume=True, progress=self.progress)
        save_autoencoder(autoencoder, self.work / "autoencoder")
        return {"autoencoder_final_loss": _final_loss(history), "autoencoder_scale": autoencoder.config.scale}

    def build_base(self) -> dict:
        from .training import train_base

        c = self.config
        autoencoder = load_autoencoder(self.work / "autoencoder") if c.autoencoder_steps > 0 else None
        backbone = random_proving_ground(self.device, seed=c.seed, autoencoder=autoencoder)
        draw = scene_sampler(BASE_SHAPES, ("flat",))
        if c.base_draws_all:
            draw = mixture(draw, scene_sampler(SHAPES, STYLES, unnamed=frozenset(OBJECT_CONCEPTS + STYLE_CONCEPTS)),
                           c.base_named_share)
        history = train_base(backbone, draw, steps=c.base_steps, batch=c.base_batch,
                             lr=c.base_lr, seed=c.seed, checkpoint_dir=self.work / "base-checkpoint", resume=True,
                             progress=self.progress, caption_dropout=c.base_caption_dropout)
        version = f"pg-{c.seed}-{c.base_steps}"
        save_proving_ground(backbone, self.paths.model, version)
        # Half precision on disk halves the bundle; the model is loaded back as fp32 on the CPU.
        self._halve_safetensors(self.paths.model / "transformer")
        return {"base_final_loss": _final_loss(history)}

    def measure_base(self) -> dict:
        """The base's gates, on the model as published (read back from half precision)."""
        from .evaluator import load_evaluator

        c = self.config
        draw, judge = self.drawer(self.load_base()), load_evaluator(self.paths.evaluator).predict
        return {"gate_base_own": measure_base_own(draw, judge, BASE_SHAPES, ("flat",), seed=c.seed),
                "gate_none_lacks": measure_none_lacks(draw, judge, OBJECT_CONCEPTS, STYLE_CONCEPTS, seed=c.seed)}

    def _halve_safetensors(self, folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        for path in folder.glob("*.safetensors"):
            tensors = {key: value.half() if value.is_floating_point() else value
                       for key, value in load_file(str(path)).items()}
            save_file(tensors, str(path), metadata={"format": "pt"})

    def load_base(self):
        # fp32 even on CUDA: the trainers train in fp32 (bf16 is for serving).
        return load_backbone("proving-ground", self.paths.model, self.device, dtype=torch.float32)

    def build_pool(self) -> dict:
        """Every planned LoRA into pool/, each written atomically (a resumed build trains only what is missing). On a
        CPU the LoRAs train in `pool_workers` processes of one thread each, side by side: a LoRA's matmuls are too
        small for one process to keep several threads busy."""
        c = self.config
        self.paths.pool.mkdir(parents=True, exist_ok=True)
        for leftover in self.paths.pool.glob("*.partial"):
            leftover.unlink()  # a file an interrupted run was writing
        todo = [lora for lora in self.plan.loras if not (self.paths.pool / f"{lora.id}.safetensors").exists()]
        started, done = time.monotonic(), 0

        def report(lora) -> None:
            nonlocal done
            done += 1
            each = (time.monotonic() - started) / done
            self.progress(f"[world] pool: {len(self.plan.loras) - len(todo) + done}/{len(self.plan.loras)} {lora.id} "
                          f"(rank {lora.rank}, {lora.subset}, {lora.format}); {each:.1f} s/LoRA, ETA {each * (len(todo) - done):.0f} s")

        if c.pool_workers > 1 and self.device == "cpu" and len(todo) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(c.pool_workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_pool_worker_start, initargs=(c, str(self.work))) as workers:
                running = {workers.submit(_pool_worker_train, lora.id): lora for lora in todo}
                for finished in as_completed(running):
                    finished.result()  # a failed LoRA stops the stage; what was written stays for --resume
                    report(running[finished])
        else:
            backbone = self.load_base()
            for lora in todo:
                self.train_pool_lora(backbone, lora)
                report(lora)
        return {"pool_size": len(self.plan.loras), "heldout": len(self.plan.split("heldout"))}

    def train_pool_lora(self, backbone, lora) -> None:
        from .training import train_lora

        c = self.config
        target = self.paths.pool / f"{lora.id}.safetensors"
        shapes, styles = concept_scenes(lora.trained_on)
        steps = c.style_lora_steps if "style" in lora.trained_on else c.lora_steps
        modules = subset_modules(list(gate_dims(backbone.transformer)), lora.subset)
        layers = train_lora(backbone, scene_sampler(shapes, styles), modules=modules, rank=lora.rank,
                            alpha=float(lora.rank), steps=max(1, round(steps * lora.steps_factor)), batch=c.lora_batch,
                            lr=c.lora_lr, seed=lora.seed, progress=lambda line: None)
        half = {name: LoraLayer(layer.down.half(), layer.up.half(), layer.scale) for name, layer in layers.items()}
        partial = target.with_suffix(f".{os.getpid()}.partial")
        write_lora_file(half, partial, lora.format, metadata={"autolora_world_id": lora.id})
        partial.rename(target)

    def calibrate_strengths(self) -> dict:
        """Each regular LoRA's strength, chosen on its maker's own prompts (strength.py) and folded into its file.
        A file records the strength it got, so a resumed stage never scales one twice."""
        from safetensors import safe_open

        from .evaluator import load_evaluator
        from .strength import choose_strength, maker_prompts, strengthened

        c = self.config
        backbone = self.load_base()
        judge = load_evaluator(self.paths.evaluator).predict
        chosen = {}
        for index, lora in enumerate(self.plan.loras):
            if lora.kind not in ("object", "style") or len(c.lora_strengths) < 2:
                continue
            target = self.paths.pool / f"{lora.id}.safetensors"
            with safe_open(str(target), "pt") as handle:
                recorded = (handle.metadata() or {}).get(STRENGTH_KEY)
            if recorded is not None:
                chosen[lora.id] = {"strength": float(recorded)}
                continue
            canonical = read_lora_file(target)
            prompts = maker_prompts(lora.concept, c.strength_prompts, np.random.default_rng([c.seed, index, 13]),
                                    BASE_SHAPES)

            def draw_at(prompt, seeds, strength):
                return generate(backbone, prompt, list(seeds), [canonical], strategy="direct", weights=[strength],
                                steps=c.sample_steps)

            strength, scores = choose_strength(draw_at, judge, lora.concept, c.lora_strengths, prompts)
            partial = target.with_suffix(f".{os.getpid()}.partial")
            write_lora_file(strengthened(canonical.layers, strength), partial, lora.format,
                            metadata={"autolora_world_id": lora.id, STRENGTH_KEY: f"{strength:g}"})
            partial.rename(target)
            chosen[lora.id] = {"strength": strength, "scores": scores}
            self.progress(f"[world] strength: {lora.id} {strength:g} (accuracy by strength {scores})")
        counts = {f"{s:g}": sum(entry["strength"] == s for entry in chosen.values()) for s in c.lora_strengths}
        return {"lora_strengths": chosen, "lora_strength_counts": counts}

    def build_previews(self) -> dict:
        c = self.config
        backbone = self.load_base()
        self.paths.previews.mkdir(parents=True, exist_ok=True)
        records = []
        for index, lora in enumerate(self.plan.loras):
            file = self.paths.pool / f"{lora.id}.safetensors"
            canonical = read_lora_file(file)
            rng = np.random.default_rng([c.seed, index, 7])
            shapes, styles = concept_scenes({lora.attribute: lora.concept})  # what the uploader claims it does
            previews = []
            for number in range(c.previews_per_lora):
                scene = random_scene(rng, shapes=shapes, styles=styles, layout=CENTRED)
                caption = captions(scene, rng)["text"]
                seed = int(rng.integers(1 << 31))
                image = generate(backbone, caption, [seed], [canonical], strategy="direct", steps=c.sample_steps)[0]
                name = f"{lora.id}-{number + 1}.png"
                Image.fromarray(image).save(self.paths.previews / name)
                previews.append({"file": f"previews/{name}", "caption": caption, "seed": seed})
            strength = self.facts.get("lora_strengths", {}).get(lora.id, {}).get("strength", 1.0)
            records.append({**lora.record(), "strength": strength, "file": f"pool/{file.name}", "sha256": file_sha256(file),
                            "modules": len(canonical.layers), "previews": previews})
            if (index + 1) % 20 == 0 or index + 1 == len(self.plan.loras):
                self.progress(f"[world] previews: {index + 1}/{len(self.plan.loras)}")
        self.paths.pool_index.write_text(json.dumps({"loras": records}, indent=1))
        return {}

    def measure_single_loras(self) -> dict:
        from .evaluator import load_evaluator

        records = self.pool_records()
        loras = {record["id"]: read_lora_file(self.stage_dir / record["file"]) for record in records}
        measured = measure_single_loras(self.drawer(self.load_base()), load_evaluator(self.paths.evaluator).predict,
                                        records, loras, BASE_SHAPES, seed=self.config.seed)
        return {"gate_single_loras": measured}

    def pool_records(self) -> list[dict]:
        return json.loads(self.paths.pool_index.read_text())["loras"]

    def build_encoder(self) -> dict:
        from ..encoder import LoraEncoder, layer_table, save_encoder, train_encoder

        c = self.config
        backbone = self.load_base()
        rng = np.random.default_rng([c.seed, 11])
        examples, groups = [], []
        for record in self.pool_records():
            if record["split"] != "train":
                continue  # held-out LoRAs never reach the encoder
            lora = read_lora_file(self.stage_dir / record["file"])
            lora.name = record["id"]
            shapes, styles = concept_scenes({"shape" if record["concept"] in SHAPES else "style": record["concept"]})
            texts = [preview["caption"] for preview in record["previews"]]
            for _ in range(6):  # more ways the uploader may have described it, each naming the concept
                scene = random_scene(rng, shapes=shapes, styles=styles, layout=CENTRED)
                texts.extend(captions(scene, rng, leave_out=False).values())
            examples.append((lora, texts))
            groups.append(record["concept"])
        encoder = LoraEncoder(layer_table(backbone.transformer), seed=c.seed).to(self.device)
        history = train_encoder(encoder, examples, steps=c.encoder_steps, batch=c.encoder_batch, seed=c.seed,
                                layer_dropout=c.encoder_layer_dropout, kind_dropout=c.encoder_kind_dropout,
                                checkpoint=self.work / "encoder-checkpoint", resume=True, groups=groups,
                                text_encoder=backbone.text_encoder, progress=self.progress)
        dropout = "".join(f"-{tag}{rate:g}" for tag, rate in (("ld", c.encoder_layer_dropout), ("kd", c.encoder_kind_dropout))
                          if rate)
        version = f"enc-{c.seed}-{c.encoder_steps}{dropout}"
        save_encoder(encoder, self.paths.encoder, version, {"train_loras": len(examples)})
        return {"encoder_final_loss": _final_loss(history), "encoder_train_ids": [lora.name for lora, _ in examples]}

    def build_gates(self) -> dict:
        from .evaluator import load_evaluator
        from .gate_study import SAMPLERS, VARIANTS, open_gates
        from .training import train_gates

        c = self.config
        unknown = sorted(set(c.gate_variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"gate_variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
        backbone = self.load_base()
        evaluator = load_evaluator(self.paths.evaluator)
        records = [r for r in self.pool_records() if r["split"] == "train" and r["kind"] in ("object", "style")]
        loras = {r["id"]: read_lora_file(self.stage_dir / r["file"]) for r in records}
        dims = gate_dims(backbone.transformer)
        scores = {}
        best = None
        for name in c.gate_variants:
            variant = VARIANTS[name]
            gates = GateBank(dims, seed=c.seed, family="proving-ground")
            if variant.init == "open":
                open_gates(gates, c.seed)
            train_gates(backbone, gates, SAMPLERS[variant.pairs](records, loras), steps=c.gate_steps,
                        batch=c.gate_batch, lr=c.gate_lr, seed=c.seed, hinge=variant.hinge,
                        caption_dropout=variant.caption_dropout, global_lora=True,
                        checkpoint_dir=self.work / f"gates-{name}", resume=True, progress=self.progress)
            gates.requires_grad_(False)
            score = validate_gates(backbone, gates, evaluator, records, loras, c)
            scores[name] = score
            self.progress(f"[world] gates {name}: both-correct on training pairs {score:.3f}")
            if best is None or score > best[0]:
                best = (score, name, gates)
        self.paths.gates.parent.mkdir(parents=True, exist_ok=True)
        best[2].save(self.paths.gates, version=f"gates-{c.seed}-{c.gate_steps}-{best[1]}")
        return {"gate_variants": scores, "gate_variant_kept": best[1], "gate_train_ids": sorted(loras)}

    # --- finishing ---------------------------------------------------------------------------------------------

    def write_manifest(self) -> None:
        files = {}
        for path in sorted(self.stage_dir.rglob("*")):
            if path.is_file() and path.name != "manifest.json":
                files[path.relative_to(self.stage_dir).as_posix()] = file_sha256(path)
        model_json = json.loads((self.paths.model / "model.json").read_text())
        manifest = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "family": "proving-ground",
            "versions": {
                "model": model_json["version"],
                "encoder": json.loads((self.paths.encoder / "encoder.json").read_text()).get("version"),
                "gates": _gate_version(self.paths.gates),
            },
            "config": asdict(self.config),
            "timings_s": self.timings,
            "facts": self.facts,
            "gates": {name: {"values": result.values, "passed": result.passed, "missed": result.missed}
                      for name, result in self.gates.items()},
            "gates_enforced": self.config.enforce_gates,
            "missed_gates": [line for result in self.gates.values() for line in result.missed],
            "torch": torch.__version__,
            "files": files,
        }
        self.paths.manifest.write_text(json.dumps(manifest, indent=1))
        self.paths.readme.write_text(bundle_readme(manifest))

    def publish(self) -> Path:
        """Swap the finished bundle in for the old one: rename, not copy, so it is never half there."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        old = self.out.with_name(self.out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if self.out.exists():
            self.out.rename(old)
        shutil.move(str(self.stage_dir), str(self.out))
        if old.exists():
            shutil.rmtree(old)
        self.progress(f"[world] bundle written to {self.out} ({_folder_mb(self.out):.1f} MB)")
        return self.out


def bundle_readme(manifest: dict) -> str:
    """The bundle's README: what it is, and every build gate with its value and verdict."""
    lines = ["# The proving-ground bundle", "",
             f"Built by `python -m autolora_worker world build` (model {manifest['versions']['model']}, torch "
             f"{manifest['torch']}); stage times in seconds: "
             + ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in manifest["timings_s"].items()) + ".", "",
             "## Build gates", "", "| gate | bound | measured | verdict |", "|---|---|---|---|"]
    for name in GATE_NAMES:
        gate = manifest["gates"].get(name)
        for metric, kind, bound in THRESHOLDS[name]:
            if gate is None:
                lines.append(f"| {name}.{metric} | {'≥' if kind == 'min' else '≤'} {bound:.2f} | not measured (this world has none) | – |")
                continue
            value = gate["values"].get(metric)
            missed = any(line.startswith(f"{name}.{metric} ") for line in gate["missed"])
            verdict = ("missed" if missed else "passed") if manifest["gates_enforced"] else "not enforced (CI preset)"
            shown = f"{value:.3f}" if isinstance(value, (int, float)) else "not measured"
            lines.append(f"| {name}.{metric} | {'≥' if kind == 'min' else '≤'} {bound:.2f} | {shown} | {verdict} |")
    if manifest["missed_gates"] and manifest["gates_enforced"]:
        lines += ["", "**Published below its gates** (`--below-gates`): " + "; ".join(manifest["missed_gates"]) + "."]
    return "\n".join(lines) + "\n"


def gate_pair_sampler(records: list[dict], loras: dict[str, CanonicalLora], same_kind: bool = False):
    """Eq. 10's data: a target LoRA and an interfering LoRA of another concept (with `same_kind`, of the target's
    own kind: two objects or two styles), the target's training images with their captions, and captions of the
    interferer's concept (for the hinge term)."""
    def draw(rng: np.random.Generator, batch: int):
        target = records[int(rng.integers(len(records)))]
        others = [r for r in records if r["concept"] != target["concept"]
                  and (not same_kind or r["kind"] == target["kind"])]
        interference = others[int(rng.integers(len(others)))] if others else target
        images, texts = scene_sampler(*concept_scenes(target["truth"]))(rng, batch)
        _, other_texts = scene_sampler(*concept_scenes(interference["truth"]))(rng, batch)
        return loras[target["id"]], loras[interference["id"]], images, texts, other_texts
    return draw


def composed_sampler(records: list[dict], loras: dict):
    """An object LoRA and a style LoRA with renders of the object drawn in the style, captioned with both: what a
    user's prompt asks of two fused LoRAs. The gate study's `composed` diagnostic trains on it; retraining judges
    candidate gates on it (real pools have no such images to train on)."""
    objects = [r for r in records if r["kind"] == "object"]
    styles = [r for r in records if r["kind"] == "style"]
    if not objects or not styles:
        raise ValueError("composed pairs need at least one object LoRA and one style LoRA")

    def draw(rng: np.random.Generator, batch: int):
        obj = objects[int(rng.integers(len(objects)))]
        sty = styles[int(rng.integers(len(styles)))]
        images, texts = scene_sampler((obj["truth"]["shape"],), (sty["truth"]["style"],))(rng, batch)
        return loras[obj["id"]], loras[sty["id"]], images, texts, texts
    return draw


def validate_gates(backbone, gates, evaluator, records: list[dict], loras: dict[str, CanonicalLora],
                   config: WorldConfig) -> float:
    """Both-correct rate of "a {shape} in {style} style" with a *training* object + style LoRA pair: how a gate
    variant is chosen without ever looking at held-out LoRAs."""
    from .render import prompt_for

    objects = [r for r in records if r["kind"] == "object"]
    styles = [r for r in records if r["kind"] == "style"]
    if not objects or not styles:
        return 0.0
    rng = np.random.default_rng([config.seed, 23])
    hits, total = 0, 0
    for _ in range(config.gate_validation_pairs):
        shape_lora = objects[int(rng.integers(len(objects)))]
        style_lora = styles[int(rng.integers(len(styles)))]
        shape, style = shape_lora["truth"]["shape"], style_lora["truth"]["style"]
        prompt = prompt_for(shape=shape, style=style, rng=rng)
        seeds = [int(s) for s in rng.integers(1 << 31, size=4)]
        images = generate(backbone, prompt, seeds, [loras[shape_lora["id"]], loras[style_lora["id"]]],
                          strategy="gated", gates=gates, steps=config.sample_steps)
        predicted = evaluator.predict(images)
        for got_shape, got_style in zip(predicted["shape"], predicted["style"]):
            hits += int(got_shape == shape and got_style == style)
            total += 1
    return hits / max(1, total)


def _final_loss(history: dict[str, list[float]]) -> float | None:
    """The mean of the last 20 steps' losses: what a run ended at, without one step's noise."""
    losses = history.get("loss")
    return float(np.mean(losses[-20:])) if losses else None


def _gate_version(path: Path) -> str | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return (handle.metadata() or {}).get("version")


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


# The pool stage's worker processes: each loads the base once and trains the LoRAs it is handed, on one thread.
_POOL_WORKER: dict = {}


def _pool_worker_start(config: WorldConfig, work: str) -> None:
    torch.set_num_threads(1)
    build = WorldBuild(config, Path(work) / "unused-out", Path(work), "cpu", progress=lambda line: None)
    _POOL_WORKER.update(build=build, backbone=build.load_base())


def _pool_worker_train(lora_id: str) -> str:
    build = _POOL_WORKER["build"]
    build.train_pool_lora(_POOL_WORKER["backbone"], build.plan.by_id(lora_id))
    return lora_id


def build_world(preset: str = "full", out: str | Path | None = None, work: str | Path = "build/world",
                device: str = "cpu", resume: bool = False, progress: Progress = print, below_gates: bool = False,
                redo: tuple[str, ...] = (), **overrides) -> Path:
    from .bundle import default_bundle_dir

    if preset not in PRESETS:
        raise ValueError(f"unknown world preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = replace(PRESETS[preset], **overrides)
    work = Path(work)
    out = Path(out) if out else default_bundle_dir()
    build = WorldBuild(config, out, work, device, progress, below_gates)
    if redo:
        build.keep_stages_of(out, tuple(redo))
    elif work.exists() and not resume:
        shutil.rmtree(work)  # from scratch unless asked to resume
    return build.build()
