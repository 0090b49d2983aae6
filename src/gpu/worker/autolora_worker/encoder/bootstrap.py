"""A family's first LoRA encoder, bootstrapped from the crawled pool (`python -m autolora_worker encoder bootstrap`):
train on the LoRAs whose source gave captions, judge on held-out ones against text-only retrieval, and say whether
the host should promote it.

The promotion rule: promote iff the weights' MRR on the held-out LoRAs is strictly above text-only retrieval's.
Each held-out LoRA is queried by its own first caption among all held-out LoRAs. Captions are both the encoder's
training signal and the query, so text only may not use them — it would find a LoRA by the very sentence it is
asked with. Text only gets what the host's text index knows of a LoRA besides captions (name, tags, trigger
words, training tags): exactly what retrieval falls back to without an encoder, which is the bar to clear. A tie
keeps text retrieval: an encoder that adds nothing is not worth a re-embed of the pool.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidLoraFileError
from ..families import get_family
from ..lora.canonical import CanonicalLora
from ..lora.formats import read_lora_file
from ..training_loop import Progress
from .files import save_encoder
from .model import EncoderLayer, LoraEncoder, embed_loras, family_layer_table
from .training import embed_texts, train_encoder

# Defaults of `encoder bootstrap`, with why.
STEPS = 300  # a synthetic 8-concept pool converges in ~100 steps (training.py); crawled captions are noisier
BATCH = 16  # InfoNCE negatives per step; capped at the number of training LoRAs
WIDTH, PROBES, DEPTH = 128, 4, 2  # LoraEncoder's own defaults: ~30M parameters on FLUX.1's 504 linears
HELDOUT_EVERY = 5  # a fifth of the captioned LoRAs judge the encoder and never train it
JUDGE_CHUNK = 16  # held-out LoRAs read and embedded at a time
MIN_HELDOUT, MIN_TRAIN = 2, 4  # ranking needs two candidates; InfoNCE needs a few distinct LoRAs per batch


@dataclass
class Example:
    """One captioned LoRA of the pool, as the host lists it. Its tensors are read again when training draws it (a
    `LoraSource`): a thousand real FLUX LoRAs are ~100 GB, more than memory holds."""

    path: str
    sha256: str
    name: str
    captions: list[str]  # preview prompts and descriptions from its source: the training signal
    text: list[str]  # name, tags, trigger words...: what text-only retrieval knows of it (never captions)

    def load(self) -> CanonicalLora:
        lora = read_lora_file(self.path)
        if lora.sha256 != self.sha256:
            raise ValueError(f"{self.path} changed while the encoder trained on it (sha256 {lora.sha256[:12]}, "
                             f"was {self.sha256[:12]})")
        return lora


def read_examples(path: str | Path, family: str, table: Sequence[EncoderLayer]) -> tuple[list[Example], list[dict]]:
    """The host's `{"examples": [{"lora", "captions", "text"}]}` → the LoRAs the encoder can train on, and the
    skipped ones as {"lora", "reason"}: unreadable files, another family's LoRAs, layers outside `table`, no
    captions, and a file listed twice (by content). ValueError if the file itself cannot be read."""
    try:
        listed = json.loads(Path(path).read_text())["examples"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot read the examples file {path}: {type(error).__name__}: {error}") from None
    if not isinstance(listed, list):
        raise ValueError(f"{path}: 'examples' is not a list")
    shapes = {layer.name: (layer.in_features, layer.out_features) for layer in table}
    examples, skipped, seen = [], [], {}
    for entry in listed:
        file = str(entry.get("lora", "")) if isinstance(entry, dict) else ""
        captions = _texts(entry.get("captions")) if isinstance(entry, dict) else []
        if not file:
            skipped.append({"lora": file, "reason": "no 'lora' path in the example"})
            continue
        if not captions:
            skipped.append({"lora": file, "reason": "no captions"})
            continue
        try:
            lora = read_lora_file(file)
        except InvalidLoraFileError as error:
            skipped.append({"lora": file, "reason": f"unreadable: {' '.join(str(error).split())}"})
            continue
        if lora.family is not None and lora.family != family:
            skipped.append({"lora": file, "reason": f"a LoRA for {lora.family}, not {family}"})
            continue
        misfit = _misfit(lora, shapes, family)
        if misfit:
            skipped.append({"lora": file, "reason": misfit})
            continue
        if lora.sha256 in seen:
            skipped.append({"lora": file, "reason": f"the same file as {seen[lora.sha256]}"})
            continue
        seen[lora.sha256] = file
        examples.append(Example(file, lora.sha256, lora.name, captions, _texts(entry.get("text"))))
        del lora  # read again when training draws it
    return examples, skipped


def _texts(value) -> list[str]:
    return [str(text).strip() for text in value if str(text).strip()] if isinstance(value, list) else []


def _misfit(lora: CanonicalLora, shapes: dict[str, tuple[int, int]], family: str) -> str | None:
    """Why the encoder's table cannot read this LoRA, or None."""
    for module, layer in lora.layers.items():
        expected = shapes.get(module)
        if expected is None:
            return f"module {module} is not a linear of {family}'s layer table"
        if (layer.in_features, layer.out_features) != expected:
            return (f"module {module} is {layer.in_features}→{layer.out_features}, {family}'s layer table has "
                    f"{expected[0]}→{expected[1]}")
    return None


def split_heldout(examples: Sequence[Example], every: int) -> tuple[list[Example], list[Example]]:
    """(training, held-out), deterministic: sorted by sha256, every `every`-th LoRA (the 1st, the every+1-th, …)
    is held out. ValueError naming how many captioned LoRAs there are and how many are needed."""
    if every < 2:
        raise ValueError(f"--heldout-every {every}: must be at least 2 (1 would hold out every LoRA)")
    ordered = sorted(examples, key=lambda example: example.sha256)
    heldout = [example for index, example in enumerate(ordered) if index % every == 0]
    training = [example for index, example in enumerate(ordered) if index % every != 0]
    if len(heldout) < MIN_HELDOUT or len(training) < MIN_TRAIN:
        needed = next(count for count in itertools.count(MIN_HELDOUT + MIN_TRAIN)
                      if -(-count // every) >= MIN_HELDOUT and count - -(-count // every) >= MIN_TRAIN)
        raise ValueError(f"{len(examples)} captioned LoRAs fit the encoder; bootstrapping needs at least {needed} "
                         f"(with --heldout-every {every}: {MIN_TRAIN} to train on and {MIN_HELDOUT} held out)")
    return training, heldout


def judge(encoder: LoraEncoder, heldout: Sequence[Example]) -> dict[str, float]:
    """Recall@1, recall@3 and MRR of each held-out LoRA found by its first caption among all held-out LoRAs, by
    the encoder's embeddings (weights) and by the unit mean of its text pieces' MiniLM embeddings (text only; a
    LoRA without text can never be found)."""
    from ..world.benchmark import rank_metrics

    queries = [example.captions[0] for example in heldout]
    pieces = [piece for example in heldout for piece in example.text]
    vectors = embed_texts(None, queries + pieces)  # (Q + P, 384), unit rows
    query_vectors, piece_vectors = vectors[:len(queries)], vectors[len(queries):]
    texts, start = [], 0
    for example in heldout:
        count = len(example.text)
        texts.append(F.normalize(piece_vectors[start:start + count].mean(0), dim=0) if count
                     else torch.zeros(vectors.shape[1]))
        start += count
    text_scores = query_vectors @ torch.stack(texts).T  # (Q, N)
    text_scores[:, torch.tensor([not example.text for example in heldout])] = -torch.inf
    # (N, 384), read and embedded a chunk at a time: only a few LoRAs are in memory at once
    weights = torch.cat([embed_loras(encoder, [example.load() for example in heldout[start:start + JUDGE_CHUNK]])
                         .float().cpu() for start in range(0, len(heldout), JUDGE_CHUNK)])
    relevant = np.eye(len(heldout), dtype=bool)  # each query's relevant LoRA is the one it captions
    metrics = {}
    for prefix, scores in (("", query_vectors @ weights.T), ("text_only_", text_scores)):
        recall1, recall3, mrr = rank_metrics(scores.numpy(), relevant)
        metrics |= {f"{prefix}recall_at_1": recall1, f"{prefix}recall_at_3": recall3, f"{prefix}mrr": mrr}
    return metrics


def bootstrap_encoder(examples_file: str | Path, out: str | Path, *, family: str = "flux", steps: int = STEPS,
                      seed: int = 0, batch: int = BATCH, width: int = WIDTH, probes: int = PROBES, depth: int = DEPTH,
                      heldout_every: int = HELDOUT_EVERY, device: str = "cpu",
                      progress: Progress | None = print) -> dict:
    """Train a fresh encoder on `family`'s layer table from the captioned LoRAs in `examples_file`, judge it on
    the held-out ones against text only, and save it to the folder `out` whether it is promoted or not (the
    host records refused candidates too). Returns the result line of `encoder bootstrap` (module docstring:
    the promotion rule). ValueError for what a caller can fix: too few usable LoRAs, bad sizes, no CUDA."""
    started = time.perf_counter()
    if get_family(family).name != "flux":
        raise ValueError(f"--family {family}: bootstrapping reads crawled FLUX.1 LoRAs; the proving ground's "
                         "encoder is trained from its bundle (`encoder train`)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} but no CUDA device is visible")
    say = progress or (lambda line: None)
    table = family_layer_table(family, None)  # flux: FLUX.1's table, no model needed
    examples, skipped = read_examples(examples_file, family, table)
    training, heldout = split_heldout(examples, heldout_every)
    say(f"[bootstrap] {len(examples)} captioned LoRAs fit: {len(training)} to train on, {len(heldout)} held out, "
        f"{len(skipped)} skipped")

    encoder = LoraEncoder(table, probes=probes, width=width, depth=depth, seed=seed).to(device)
    history = train_encoder(encoder, [(example, example.captions) for example in training], steps=steps,
                            batch=min(batch, len(training)), seed=seed, progress=progress,
                            log_every=max(1, steps // 4))
    metrics = judge(encoder, heldout)
    promote = metrics["mrr"] > metrics["text_only_mrr"]
    comparison = (f"weights MRR {metrics['mrr']:.3f} vs text-only MRR {metrics['text_only_mrr']:.3f} on "
                  f"{len(heldout)} held-out LoRAs")
    reason = (f"{comparison}: the weights find held-out LoRAs better than their text does" if promote else
              f"{comparison}: the weights do not beat text-only retrieval, which stays")
    losses = history.get("loss") or []
    final_loss = float(np.mean(losses[-20:])) if losses else None
    version = f"enc-{family}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-s{seed}-{steps}"
    save_encoder(encoder, out, version, {
        "family": family, "bootstrap": True, "train_loras": len(training), "heldout_loras": len(heldout),
        "skipped_loras": len(skipped), "steps": steps, "seed": seed, "final_loss": final_loss,
        "promote": promote, **{key: round(value, 4) for key, value in metrics.items()}})
    return {"version": version, "promote": promote, "reason": reason, **metrics, "train_loras": len(training),
            "heldout_loras": len(heldout), "skipped": skipped, "steps": steps, "final_loss": final_loss,
            "seconds": round(time.perf_counter() - started, 2)}
