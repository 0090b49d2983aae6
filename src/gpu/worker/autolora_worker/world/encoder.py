"""The LoRA weight encoder (paper eq. 1-3): a LoRA's factors in, one unit vector in the frozen text encoder's
space out, so that cosine with a prompt's embedding ranks a pool of LoRAs (eq. 4-5). Model, batching, contrastive
training, and the folder it is saved in.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import IncompatibleLoraError, InvalidLoraFileError, ModelLoadError
from ..families import get_family
from ..fusion import fused_layers
from ..lora.canonical import CanonicalLora, LoraLayer
from ..text import Conditioning, MiniLMTextEncoder
from .loop import LoopSettings, Progress, StepRandom, run_loop

ENCODER_FORMAT = "autolora-lora-encoder"
FORMAT_VERSION = 1
CONFIG_NAME = "encoder.json"
WEIGHTS_NAME = "encoder.safetensors"
TEXT_DIM = 384  # all-MiniLM-L6-v2's sentence embedding
INITIAL_LOG_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
MAX_LOG_SCALE = math.log(100.0)  # CLIP's clamp: beyond 100 the logits saturate and training destabilises
History = dict[str, list[float]]
TextEncoder = Callable[[list[str]], Conditioning]  # e.g. MiniLMTextEncoder: only `.pooled` is used


@dataclass(frozen=True)
class EncoderLayer:
    """One LoRA-carrying linear of the base model, as the encoder's layer table lists it."""

    name: str
    in_features: int
    out_features: int

    @property
    def kind(self) -> str:
        return layer_type(self.name)


def layer_type(module: str) -> str:
    """`transformer_blocks.3.attn.to_q` → `transformer_blocks.*.attn.to_q`. The first numeric path component is the
    block index in diffusers' ModuleLists; later ones (`to_out.0`, `ff.net.2`) name the layer itself."""
    parts = module.split(".")
    for index, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:index] + ["*"] + parts[index + 1:])
    return module


def layer_table(model: nn.Module) -> list[EncoderLayer]:
    """Every wrapped linear of a transformer, in module order: the layers its LoRAs can carry."""
    return [EncoderLayer(name, layer.in_features, layer.out_features) for name, layer in fused_layers(model).items()]


@dataclass
class LayerFactors:
    """One table layer across a batch: the LoRAs that carry it, their factors zero-padded to the largest rank
    among them (zero rank components add exactly nothing to p·Aᵀ·Bᵀ)."""

    rows: torch.Tensor  # (n,) positions in the batch
    down: torch.Tensor  # (n, R, in)
    up: torch.Tensor  # (n, out, R)
    scale: torch.Tensor  # (n,)


@dataclass
class LoraBatch:
    size: int
    present: torch.Tensor  # (B, M) bool: LoRA b carries table layer m
    layers: dict[int, LayerFactors]  # table position -> factors of the LoRAs that carry it


PreparedLora = list[tuple[int, LoraLayer]]  # (table position, float32 factors on the encoder's device)


class LoraEncoder(nn.Module):
    """Eq. 1-2. Per table layer i a learned probe pᵢ (L×in) reads the LoRA's update: vᵢ = pᵢ·Aᵢᵀ·Bᵢᵀ·scale, an
    (L, out) response computed from the factors, so any rank works and ΔW is never formed.

    - vᵢ is divided by its RMS: a LoRA's strength (its scale, its training length, its rank's usual magnitude)
      is a user's knob, not its concept, so only the *direction* of each layer's response enters the token. What
      the norms carry across layers — which layers the LoRA changed most — is kept as one number per token, the
      layer's norm over the mean norm of the LoRA's present layers, which a global rescaling leaves unchanged.
    - The L rows are projected by a Linear(out → d) shared per layer *type* (the block index removed) and
      flattened into one token by a Linear(L·d → d). One token per layer keeps the sequence at the number of
      layers whatever L is (304 for FLUX; L tokens per layer would make attention L² times dearer), and the
      projection parameters, which dominate the model, do not grow with L.
    - A learned position per table layer (zero init, as the authors'), a pre-LN transformer encoder over the
      present layers (absent ones are key-padding-masked), a mean over the present layers, a Linear(d → 384)
      into the text space and an L2 normalisation.
    """

    def __init__(self, layers: Sequence[EncoderLayer | tuple[str, int, int]], *, probes: int = 4, width: int = 128,
                 depth: int = 2, heads: int = 4, text_dim: int = TEXT_DIM, seed: int = 0):
        super().__init__()
        table = [layer if isinstance(layer, EncoderLayer) else EncoderLayer(*layer) for layer in layers]
        if not table:
            raise ValueError("the LoRA encoder needs at least one layer in its table")
        names = [layer.name for layer in table]
        if len(set(names)) != len(names):
            duplicates = sorted({name for name in names if names.count(name) > 1})
            raise ValueError(f"duplicate modules in the layer table: {duplicates[:5]}")
        if probes < 1 or depth < 1 or width < 1 or heads < 1 or text_dim < 1 or width % heads:
            raise ValueError(f"bad encoder size: probes={probes} width={width} depth={depth} heads={heads} "
                             f"text_dim={text_dim} (width must be divisible by heads)")
        kinds: dict[str, int] = {}
        for layer in table:
            width_of_kind = kinds.setdefault(layer.kind, layer.out_features)
            if width_of_kind != layer.out_features:
                raise ValueError(f"layers of type {layer.kind} differ in output size ({width_of_kind} vs "
                                 f"{layer.out_features} at {layer.name}); one projection cannot serve both")
        self.table = tuple(table)
        self.index = {layer.name: position for position, layer in enumerate(table)}
        self.kinds = tuple(kinds)
        self.kind_of = [self.kinds.index(layer.kind) for layer in table]
        self.config = dict(probes=probes, width=width, depth=depth, heads=heads, text_dim=text_dim)
        self.version: str | None = None
        # The initialisation is a function of `seed` alone (the global generator is left as it was), so a world
        # build is reproducible without seeding anything around it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._build(table, kinds, probes, width, depth, heads, text_dim)

    def _build(self, table: list[EncoderLayer], kinds: dict[str, int], probes: int, width: int, depth: int,
               heads: int, text_dim: int) -> None:
        # Probe rows ~ N(0, 1/in) give responses of the order of ΔW's row norms; the scale is normalised away anyway.
        self.probes = nn.ParameterList(
            nn.Parameter(torch.randn(probes, layer.in_features) / math.sqrt(layer.in_features)) for layer in table)
        self.projections = nn.ModuleList(nn.Linear(kinds[kind], width) for kind in self.kinds)
        self.mix = nn.Linear(probes * width, width)
        self.magnitude = nn.Parameter(torch.zeros(width))
        self.position = nn.Parameter(torch.zeros(len(table), width))
        # No causal mask: the authors' CLIP text layers kept CLIP's causal mask, an artefact for an unordered set
        # of layers (the first layer would see only itself). No dropout: the only randomness of a step is its
        # (seed, step) generator, which makes resumed training bit-exact.
        block = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, depth, norm=nn.LayerNorm(width), enable_nested_tensor=False)
        self.head = nn.Linear(width, text_dim)
        # Learnable temperature of eq. 3 (the authors' later code); here so that it is saved and resumed with the rest.
        self.logit_scale = nn.Parameter(torch.tensor(INITIAL_LOG_SCALE))

    @classmethod
    def for_model(cls, model: nn.Module, **options: int) -> "LoraEncoder":
        return cls(layer_table(model), **options)

    @property
    def device(self) -> torch.device:
        return self.position.device

    def forward(self, batch: LoraBatch) -> torch.Tensor:
        size, count = batch.size, len(self.table)
        tokens = self.position.new_zeros(size, count, self.position.shape[1])  # (B, M, d)
        norms = self.position.new_zeros(size, count)  # (B, M)
        for position, factors in batch.layers.items():
            probe = self.probes[position]  # (L, in)
            response = torch.einsum("li,nri->nlr", probe, factors.down)  # (n, L, R)
            response = torch.einsum("nlr,nor->nlo", response, factors.up) * factors.scale[:, None, None]  # (n, L, out)
            norm = response.flatten(1).norm(dim=1)  # (n,)
            rms = norm / math.sqrt(response[0].numel())
            unit = response / rms.clamp_min(1e-12)[:, None, None]  # (n, L, out), RMS 1
            projected = self.projections[self.kind_of[position]](unit)  # (n, L, d)
            tokens[factors.rows, position] = self.mix(projected.flatten(1))  # (n, d)
            norms[factors.rows, position] = norm
        present = batch.present
        weights = present.to(tokens.dtype)  # (B, M)
        mean_norm = (norms * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True)  # (B, 1)
        relative = norms / mean_norm.clamp_min(1e-30)  # (B, M), 0 where absent, mean 1 over present layers
        tokens = tokens + relative[..., None] * self.magnitude + self.position  # (B, M, d)
        states = self.blocks(tokens, src_key_padding_mask=~present)  # (B, M, d)
        pooled = (states * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)  # (B, d), present layers only
        return F.normalize(self.head(pooled), dim=-1)  # (B, text_dim)


def prepare_lora(encoder: LoraEncoder, lora: CanonicalLora) -> PreparedLora:
    """A LoRA's layers by table position as float32 on the encoder's device; IncompatibleLoraError names the first
    module the table does not have or whose shape differs."""
    label = lora.name or lora.sha256[:12] or "LoRA"
    if not lora.layers:
        raise IncompatibleLoraError(f"{label} has no layers to encode")
    prepared = []
    for module, layer in lora.layers.items():
        position = encoder.index.get(module)
        if position is None:
            raise IncompatibleLoraError(f"{label}: module {module!r} is not in the LoRA encoder's layer table "
                                        f"({len(encoder.table)} layers of the model it was built for)")
        expected = encoder.table[position]
        if (layer.in_features, layer.out_features) != (expected.in_features, expected.out_features):
            raise IncompatibleLoraError(
                f"{label}: module {module!r} is {layer.in_features}→{layer.out_features}, the encoder's table has "
                f"{expected.in_features}→{expected.out_features}")
        prepared.append((position, layer.to(encoder.device, torch.float32)))
    return prepared


def collate(encoder: LoraEncoder, loras: Sequence[PreparedLora]) -> LoraBatch:
    """Prepared LoRAs with any layer subsets and ranks → one batch: per layer, the LoRAs that carry it."""
    size, device = len(loras), encoder.device
    present = torch.zeros(size, len(encoder.table), dtype=torch.bool)
    carriers: dict[int, list[tuple[int, LoraLayer]]] = {}
    for row, lora in enumerate(loras):
        for position, layer in lora:
            carriers.setdefault(position, []).append((row, layer))
            present[row, position] = True
    layers = {}
    for position in sorted(carriers):
        entries = carriers[position]
        table = encoder.table[position]
        rank = max(layer.rank for _, layer in entries)
        down = torch.zeros(len(entries), rank, table.in_features, device=device)
        up = torch.zeros(len(entries), table.out_features, rank, device=device)
        for slot, (_, layer) in enumerate(entries):
            down[slot, :layer.rank] = layer.down
            up[slot, :, :layer.rank] = layer.up
        rows = torch.tensor([row for row, _ in entries], device=device)
        scale = torch.tensor([layer.scale for _, layer in entries], device=device)
        layers[position] = LayerFactors(rows, down, up, scale)
    return LoraBatch(size, present.to(device), layers)


@torch.no_grad()
def embed_loras(encoder: LoraEncoder, loras: Sequence[CanonicalLora], chunk: int = 64) -> torch.Tensor:
    """(B, text_dim) unit vectors, one per LoRA, on the encoder's device. A LoRA's embedding does not depend on
    the others in its batch (up to float rounding): absent layers are masked out of attention and pooling."""
    if not loras:
        return torch.zeros(0, encoder.config["text_dim"], device=encoder.device)
    prepared = [prepare_lora(encoder, lora) for lora in loras]
    return torch.cat([encoder(collate(encoder, prepared[start:start + chunk]))
                      for start in range(0, len(prepared), chunk)])


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


def train_encoder(encoder: LoraEncoder, examples: Sequence[tuple[CanonicalLora, Sequence[str]]], *, steps: int,
                  batch: int, seed: int, lr: float = 1e-3, checkpoint: str | Path | None = None, resume: bool = False,
                  progress: Progress | None = print, text_encoder: TextEncoder | None = None,
                  groups: Sequence[Any] | None = None,
                  warmup: int | None = None, weight_decay: float = 0.01, clip: float = 1.0,
                  checkpoint_every: int = 100, log_every: int = 50) -> History:
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
    if not 2 <= batch <= len(group_ids):
        raise ValueError(f"encoder: batch {batch} must be at least 2 (InfoNCE needs negatives) and at most the "
                         f"number of distinct {'groups' if groups is not None else 'examples'} ({len(group_ids)})")

    prepared = [prepare_lora(encoder, lora) for lora, _ in examples]
    texts = list(dict.fromkeys(text for _, captions in examples for text in captions))
    text_rows = {text: row for row, text in enumerate(texts)}
    caption_rows = [[text_rows[text] for text in captions] for _, captions in examples]
    text_embeddings = _embed_texts(text_encoder, texts).to(encoder.device)  # (U, 384)

    def step_loss(step: int, random: StepRandom) -> dict[str, torch.Tensor]:
        picks = draw_batch(random.data, group_of, batch)
        captions = [caption_rows[pick][int(random.data.integers(len(caption_rows[pick])))] for pick in picks]
        lora_embeddings = encoder(collate(encoder, [prepared[pick] for pick in picks]))  # (B, 384)
        loss, accuracy = contrastive_loss(lora_embeddings, text_embeddings[captions], encoder.logit_scale)
        return {"loss": loss, "accuracy": accuracy,
                "logit_scale": encoder.logit_scale.detach().clamp(max=MAX_LOG_SCALE).exp()}

    settings = LoopSettings(
        name="encoder", steps=steps, lr=lr, seed=seed, warmup=steps // 20 if warmup is None else warmup,
        weight_decay=weight_decay, clip=clip, checkpoint_dir=Path(checkpoint) if checkpoint is not None else None,
        checkpoint_every=checkpoint_every, resume=resume, progress=progress, log_every=log_every,
        fingerprint={"batch": batch, "data": _data_digest(examples, labels), **encoder.config,
                     "layers": len(encoder.table)})
    encoder.train().requires_grad_(True)
    try:
        return run_loop(dict(encoder.named_parameters()), step_loss, settings)
    finally:
        encoder.eval().requires_grad_(False)


def _embed_texts(text_encoder: TextEncoder | None, texts: list[str], chunk: int = 64) -> torch.Tensor:
    if text_encoder is None:
        text_encoder = MiniLMTextEncoder(get_family("proving-ground").extra["text_max_tokens"], torch.device("cpu"),
                                         torch.float32)
    with torch.no_grad():
        return torch.cat([text_encoder(texts[start:start + chunk]).pooled.float()
                          for start in range(0, len(texts), chunk)])


def _data_digest(examples: Sequence[tuple[CanonicalLora, Sequence[str]]], labels: list[Any]) -> str:
    """What the trajectory depends on in the data: each LoRA's identity, its captions and its group, in order."""
    digest = hashlib.sha256()
    for (lora, captions), label in zip(examples, labels):
        digest.update(json.dumps([lora.sha256 or lora.name, list(captions), str(label)]).encode())
    return digest.hexdigest()[:16]


def save_encoder(encoder: LoraEncoder, folder: str | Path, version: str,
                 extra_metadata: dict[str, Any] | None = None) -> None:
    """`folder/encoder.safetensors` + `folder/encoder.json` (layer table, sizes, version, weights' sha256). Each
    file is renamed into place, the config last, so a reader never sees a config without its weights.

    Weights are stored in half precision (read back as float32): the encoder of the 192-wide proving ground is
    7.3 MB in fp32, which would take the committed bundle past its 40 MB cap."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_NAME
    partial = weights.with_name(WEIGHTS_NAME + ".partial")
    state = {name: tensor.detach().half().cpu().contiguous() if tensor.is_floating_point()
             else tensor.detach().cpu().contiguous() for name, tensor in encoder.state_dict().items()}
    save_file(state, str(partial), metadata={"format": ENCODER_FORMAT, "version": version})
    os.replace(partial, weights)
    config = {
        "format": ENCODER_FORMAT, "format_version": FORMAT_VERSION, "version": version, **encoder.config,
        "layers": [[layer.name, layer.in_features, layer.out_features] for layer in encoder.table],
        "parameters": sum(tensor.numel() for tensor in state.values()),
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "metadata": extra_metadata or {},
    }
    partial = folder / (CONFIG_NAME + ".partial")
    partial.write_text(json.dumps(config, indent=1))
    os.replace(partial, folder / CONFIG_NAME)
    encoder.version = version


def load_encoder(folder: str | Path, model: nn.Module | None = None, device: str | torch.device = "cpu") -> LoraEncoder:
    """The encoder saved in `folder`, in eval mode with gradients off. FileNotFoundError if there is none;
    ModelLoadError for a foreign or damaged folder, or (given `model`) a layer table that is not the model's."""
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"no LoRA encoder in {folder} ({CONFIG_NAME} missing); build one with `make world`")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{config_path} is not readable JSON: {error}") from error
    if not isinstance(config, dict) or config.get("format") != ENCODER_FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ModelLoadError(f"{folder} does not hold a LoRA encoder ({CONFIG_NAME} format {found!r}, "
                             f"expected {ENCODER_FORMAT!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{folder}: encoder format version {config.get('format_version')!r}, this worker reads "
                             f"{FORMAT_VERSION}")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelLoadError(f"{folder}: {WEIGHTS_NAME} missing next to {CONFIG_NAME}")
    if config.get("weights_sha256") and hashlib.sha256(weights.read_bytes()).hexdigest() != config["weights_sha256"]:
        raise ModelLoadError(f"{weights} does not match the sha256 in {CONFIG_NAME} (damaged or replaced)")
    try:
        encoder = LoraEncoder([EncoderLayer(*layer) for layer in config["layers"]],
                              **{key: config[key] for key in ("probes", "width", "depth", "heads", "text_dim")})
        encoder.load_state_dict(load_file(str(weights)))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        details = " ".join(str(error).split())
        raise ModelLoadError(f"{folder}: the encoder does not load: {details[:300]}") from error
    if model is not None:
        check_layer_table(encoder, model, str(folder))
    encoder.version = config["version"]
    return encoder.to(device).eval().requires_grad_(False)


def check_layer_table(encoder: LoraEncoder, model: nn.Module, label: str = "the LoRA encoder") -> None:
    """ModelLoadError naming the first difference if the encoder was not built for this model's wrapped linears."""
    expected = layer_table(model)
    if list(encoder.table) == expected:
        return
    for position, (ours, theirs) in enumerate(zip(encoder.table, expected)):
        if ours != theirs:
            raise ModelLoadError(f"{label} was built for another model: table layer {position} is {ours.name} "
                                 f"{ours.in_features}→{ours.out_features}, the model has {theirs.name} "
                                 f"{theirs.in_features}→{theirs.out_features}")
    raise ModelLoadError(f"{label} was built for another model: {len(encoder.table)} table layers, the model has "
                         f"{len(expected)}")


def embed_command(path: str, as_json: bool, encoder_folder: str | None) -> int:
    """`python -m autolora_worker embed FILE`: print the LoRA's embedding; one `error:` line and 2 if the file or
    the encoder cannot be used."""
    from ..lora.formats import read_lora_file
    from .bundle import BundlePaths, default_bundle_dir

    folder = Path(encoder_folder) if encoder_folder else BundlePaths(default_bundle_dir()).encoder
    try:
        lora = read_lora_file(path)
        encoder = load_encoder(folder)
        embedding = embed_loras(encoder, [lora])[0].cpu()
    except (InvalidLoraFileError, IncompatibleLoraError, ModelLoadError, FileNotFoundError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps({"sha256": lora.sha256, "embedding": embedding.tolist(), "dim": int(embedding.numel()),
                          "encoder_version": encoder.version, "modules": len(lora.layers)}))
    else:
        print(f"{path}: {embedding.numel()}-d embedding of {len(lora.layers)} modules by encoder {encoder.version}")
        print(f"sha256 {lora.sha256}")
    return 0
