"""The LoRA weight encoder's model (paper eq. 1-2): its layer table, the batching of LoRAs with any layer subsets
and ranks, and `embed_loras`, which turns LoRAs into unit vectors in the frozen text encoder's space."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import IncompatibleLoraError
from ..families import get_family
from ..fusion import fused_layers
from ..lora.canonical import CanonicalLora, LoraLayer
from ..models import meta_flux_transformer

TEXT_DIM = 384  # all-MiniLM-L6-v2's sentence embedding
INITIAL_LOG_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature 0.07


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


def family_layer_table(family: str, model: nn.Module) -> list[EncoderLayer]:
    """The layer table a LoRA encoder for `family` reads, on a worker that loaded `model`.

    For `flux` it is FLUX.1's, whatever flux model is loaded: community LoRAs are FLUX.1-shaped, so a worker on a
    smaller stand-in still embeds them with the same encoder a FLUX.1-dev worker uses. Any other family (the
    proving ground, whose model changes with each bundle) reads the loaded model's own wrapped linears."""
    if get_family(family).name == "flux":
        return list(_flux1_layer_table())
    return layer_table(model)


@functools.cache
def _flux1_layer_table() -> tuple[EncoderLayer, ...]:
    return tuple(layer_table(meta_flux_transformer()))


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
    return embed_prepared(encoder, [prepare_lora(encoder, lora) for lora in loras], chunk)


@torch.no_grad()
def embed_prepared(encoder: LoraEncoder, prepared: Sequence[PreparedLora], chunk: int = 64) -> torch.Tensor:
    """embed_loras for LoRAs already through prepare_lora (the worker's /embed prepares each file as it reads it)."""
    if not prepared:
        return torch.zeros(0, encoder.config["text_dim"], device=encoder.device)
    return torch.cat([encoder(collate(encoder, prepared[start:start + chunk]))
                      for start in range(0, len(prepared), chunk)])
