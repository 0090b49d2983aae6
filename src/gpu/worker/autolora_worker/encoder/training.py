"""Training the LoRA encoder contrastively against a frozen text encoder (paper eq. 3), with the seeded,
checkpointed loop every trainer runs."""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..families import get_family
from ..lora.canonical import CanonicalLora
from ..text import Conditioning, MiniLMTextEncoder
from ..training_loop import LoopSettings, Progress, StepRandom, run_loop
from .model import LoraEncoder, PreparedLora, collate, prepare_lora

MAX_LOG_SCALE = math.log(100.0)  # CLIP's clamp: beyond 100 the logits saturate and training destabilises
History = dict[str, list[float]]
TextEncoder = Callable[[list[str]], Conditioning]  # e.g. MiniLMTextEncoder: only `.pooled` is used


def contrastive_loss(lora_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
                     log_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE (eq. 3) on unit vectors, (B, D) each, row i of both the same example; averaged rather than
    summed, which only rescales the gradient. Returns the loss and the in-batch text→LoRA top-1 accuracy."""
    logits = log_scale.clamp(max=MAX_LOG_SCALE).exp() * lora_embeddings @ text_embeddings.T  # (B, B) LoRA × caption
    targets = torch.arange(logits.shape[0], device=logits.device)
    loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    accuracy = (logits.argmax(dim=0) == targets).float().mean()  # for each caption: is its own LoRA ranked first?
    return loss, accuracy


def draw_batch(rng: np.random.Generator, group_of: Sequence[int], batch: int) -> list[int]:
    """`batch` example indices in random order, at most one per group (visiting examples in a random permutation
    and skipping a group already taken, so an example's chance grows with its group's share, not its group's
    count)."""
    picked, taken = [], set()
    for index in rng.permutation(len(group_of)):
        group = group_of[index]
        if group not in taken:
            taken.add(group)
            picked.append(int(index))
            if len(picked) == batch:
                break
    return picked


class LoraSource(Protocol):
    """A LoRA read from disk when a batch needs it (a crawled pool does not fit in memory): its identity up front."""

    sha256: str
    name: str

    def load(self) -> CanonicalLora: ...


def train_encoder(encoder: LoraEncoder, examples: Sequence[tuple[CanonicalLora | LoraSource, Sequence[str]]], *,
                  steps: int, batch: int, seed: int, lr: float = 1e-3, checkpoint: str | Path | None = None, resume: bool = False,
                  progress: Progress | None = print, text_encoder: TextEncoder | None = None,
                  groups: Sequence[Any] | None = None,
                  warmup: int | None = None, weight_decay: float = 0.01, clip: float = 1.0,
                  checkpoint_every: int = 100, log_every: int = 50, resident: int | None = None,
                  layer_dropout: float = 0.0, kind_dropout: float = 0.0) -> History:
    """Train the encoder (and its temperature) contrastively against a frozen text encoder (eq. 3).

    `examples` are (LoRA, its captions); each step draws `batch` examples and one caption of each, both from the
    step's (seed, step) generator, so a run resumed from `checkpoint` (a folder; the checkpoint holds the encoder,
    the optimiser and the step, written atomically every `checkpoint_every` steps and at the end) is bit-identical
    to an uninterrupted one. Every caption is embedded once, up front, by `text_encoder` (anything returning
    `.pooled` unit vectors for a list of strings; default: the proving ground's frozen MiniLM), which never trains.

    `groups` (one concept label per example) keeps two examples of one group out of the same batch. InfoNCE
    treats every other pair in a batch as a negative; two LoRAs of the same concept would be pushed apart although
    each one's captions describe the other just as well, so the encoder would be taught to separate them by
    incidental weight features — false negatives. With groups a batch holds distinct concepts, and `batch` may not
    exceed the number of distinct groups.

    A LoRA given as a `LoraSource` is read when a batch draws it, and at most `resident` of those (default 2 ×
    `batch`) are kept prepared on the device: a pool of real FLUX LoRAs (0.3 GB each in fp32 over every linear) does
    not fit in memory at once. LoRAs given as `CanonicalLora` are prepared once, up front.

    `layer_dropout` and `kind_dropout` show the encoder each LoRA with part of its layers: each layer is left out
    with probability `layer_dropout`, each layer type (`attn.to_q`, `ff.net.2`, ... with the block index removed)
    with `kind_dropout`, and at least one layer always stays. Community LoRAs of one concept adapt different layer
    subsets (attention only, all linears, double blocks only), so an encoder that has seen a concept only on some
    subsets must still place it when a LoRA carries others.

    `lr` 1e-3 with 5% warmup and a cosine down to 10% suits this ~1.4M-parameter model with AdamW (a synthetic
    8-concept pool converges in ~100 steps); the light weight decay also reaches the temperature, moving its log by
    under 0.05 over 1500 steps. Returns the per-step history: loss, accuracy (in-batch text→LoRA top-1),
    logit_scale and lr. The encoder comes back in eval mode with gradients off.
    """
    if not examples:
        raise ValueError("encoder: no training examples")
    empty = [lora.name or str(index) for index, (lora, texts) in enumerate(examples) if not texts]
    if empty:
        raise ValueError(f"encoder: examples without captions: {empty[:5]}")
    if groups is not None and len(groups) != len(examples):
        raise ValueError(f"encoder: {len(groups)} groups for {len(examples)} examples; give one group per example")
    labels = list(groups) if groups is not None else list(range(len(examples)))
    group_ids = {label: index for index, label in enumerate(dict.fromkeys(labels))}
    group_of = [group_ids[label] for label in labels]
    for label, rate in (("layer_dropout", layer_dropout), ("kind_dropout", kind_dropout)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"encoder: {label} must be in [0, 1), got {rate}")
    if not 2 <= batch <= len(group_ids):
        raise ValueError(f"encoder: batch {batch} must be at least 2 (InfoNCE needs negatives) and at most the "
                         f"number of distinct {'groups' if groups is not None else 'examples'} ({len(group_ids)})")

    prepared = _Prepared(encoder, [lora for lora, _ in examples], resident or 2 * batch)
    texts = list(dict.fromkeys(text for _, captions in examples for text in captions))
    text_rows = {text: row for row, text in enumerate(texts)}
    caption_rows = [[text_rows[text] for text in captions] for _, captions in examples]
    text_embeddings = embed_texts(text_encoder, texts).to(encoder.device)  # (U, 384)

    def step_loss(step: int, random: StepRandom) -> dict[str, torch.Tensor]:
        picks = draw_batch(random.data, group_of, batch)
        captions = [caption_rows[pick][int(random.data.integers(len(caption_rows[pick])))] for pick in picks]
        loras = [prepared[pick] for pick in picks]
        if layer_dropout or kind_dropout:
            loras = [drop_layers(encoder, lora, random.data, layer_dropout, kind_dropout) for lora in loras]
        lora_embeddings = encoder(collate(encoder, loras))  # (B, 384)
        loss, accuracy = contrastive_loss(lora_embeddings, text_embeddings[captions], encoder.logit_scale)
        return {"loss": loss, "accuracy": accuracy,
                "logit_scale": encoder.logit_scale.detach().clamp(max=MAX_LOG_SCALE).exp()}

    settings = LoopSettings(
        name="encoder", steps=steps, lr=lr, seed=seed, warmup=steps // 20 if warmup is None else warmup,
        weight_decay=weight_decay, clip=clip, checkpoint_dir=Path(checkpoint) if checkpoint is not None else None,
        checkpoint_every=checkpoint_every, resume=resume, progress=progress, log_every=log_every,
        fingerprint={"batch": batch, "data": _data_digest(examples, labels), **encoder.config,
                     "layers": len(encoder.table), "layer_dropout": layer_dropout, "kind_dropout": kind_dropout})
    encoder.train().requires_grad_(True)
    try:
        return run_loop(dict(encoder.named_parameters()), step_loss, settings)
    finally:
        encoder.eval().requires_grad_(False)


def drop_layers(encoder: LoraEncoder, lora: PreparedLora, rng: np.random.Generator, layer_rate: float,
                kind_rate: float) -> PreparedLora:
    """`lora` without a random part of its layers: each layer type with probability `kind_rate`, then each
    remaining layer with `layer_rate`; if nothing is left, one layer drawn from all of them."""
    dropped_kinds = {kind for kind in range(len(encoder.kinds)) if rng.random() < kind_rate} if kind_rate else set()
    keep = [(position, layer) for position, layer in lora
            if encoder.kind_of[position] not in dropped_kinds and not (layer_rate and rng.random() < layer_rate)]
    return keep or [lora[int(rng.integers(len(lora)))]]


class _Prepared:
    """Prepared LoRAs by example index: in memory ones once, `LoraSource`s on demand with the least recently used
    dropped beyond `resident`."""

    def __init__(self, encoder: LoraEncoder, loras: Sequence[CanonicalLora | LoraSource], resident: int):
        self.encoder, self.loras, self.resident = encoder, loras, max(1, resident)
        self.fixed = {index: prepare_lora(encoder, lora) for index, lora in enumerate(loras)
                      if isinstance(lora, CanonicalLora)}
        self.recent: OrderedDict[int, Any] = OrderedDict()

    def __getitem__(self, index: int):
        if index in self.fixed:
            return self.fixed[index]
        if index not in self.recent:
            self.recent[index] = prepare_lora(self.encoder, self.loras[index].load())
            while len(self.recent) > self.resident:
                self.recent.popitem(last=False)
        self.recent.move_to_end(index)
        return self.recent[index]


def embed_texts(text_encoder: TextEncoder | None, texts: list[str], chunk: int = 64) -> torch.Tensor:
    if text_encoder is None:
        text_encoder = MiniLMTextEncoder(get_family("proving-ground").extra["text_max_tokens"], torch.device("cpu"),
                                         torch.float32)
    with torch.no_grad():
        return torch.cat([text_encoder(texts[start:start + chunk]).pooled.float()
                          for start in range(0, len(texts), chunk)])


def _data_digest(examples: Sequence[tuple[CanonicalLora | LoraSource, Sequence[str]]], labels: list[Any]) -> str:
    """What the trajectory depends on in the data: each LoRA's identity, its captions and its group, in order."""
    digest = hashlib.sha256()
    for (lora, captions), label in zip(examples, labels):
        digest.update(json.dumps([lora.sha256 or lora.name, list(captions), str(label)]).encode())
    return digest.hexdigest()[:16]
