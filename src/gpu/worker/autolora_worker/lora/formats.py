"""Reading every FLUX LoRA file format into a CanonicalLora, and writing canonical LoRAs back out.

Reading: our own cheap safetensors check (pickles are refused, never opened), then each file module's tensors are
recognised by their key names and converted by diffusers' own converters (`FluxLoraLoaderMixin.lora_state_dict`)
one module at a time, so that a key diffusers cannot place is reported under its own name instead of failing the
whole file or vanishing. Writing uses our inverse name tables (keys.py).
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
from diffusers.loaders.lora_pipeline import FluxLoraLoaderMixin
from peft.utils.other import get_pattern_key

from ..errors import InvalidLoraFileError
from ..families import FAMILIES, family_for_inner_dim
from . import keys
from .canonical import CanonicalLora, LoraLayer
from .files import DEFAULT_MAX_LORA_BYTES, read_regular_file

FORMATS = ("diffusers", "kohya", "comfyui", "xlabs", "bfl")

# ---------------------------------------------------------------------------------------------------- reading

_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save zip archive; pickle protocol 2+

_SUFFIX = r"(?P<suffix>lora_down\.weight|lora_up\.weight|lora_A\.weight|lora_B\.weight|alpha)"
_KOHYA_KEY = re.compile(
    r"^(?P<stem>lora_(?:unet|transformer)_\w+)\.(?P<suffix>lora_down\.weight|lora_up\.weight|alpha)$"
)
_XLABS_KEY = re.compile(
    r"^(?:diffusion_model\.)?(?P<name>(?:double|single)_blocks\.\d+\.processor\.\w+)\.(?:down|up)\.weight$"
)
_BFL_KEY = re.compile(
    r"^(?P<prefix>diffusion_model\.|base_model\.model\.)?"
    r"(?P<path>(?:double_blocks|single_blocks|img_in|txt_in|time_in|vector_in|guidance_in|final_layer)[\w.]*?)\."
    + _SUFFIX + "$"
)
_DIFFUSERS_KEY = re.compile(
    r"^(?P<prefix>transformer\.|diffusion_model\.|base_model\.model\.)?"
    r"(?P<module>(?:transformer_blocks|single_transformer_blocks|x_embedder|context_embedder|time_text_embed"
    r"|norm_out|proj_out)[\w.]*?)\." + _SUFFIX + "$"
)
_TO_KOHYA = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}
_TO_PEFT = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}

# diffusers' kohya converter splits single-block linear1 at FLUX.1's sizes (q, k, v 3072 rows, MLP 12288) whatever
# the model, and asserts the total. For a smaller FLUX-shaped model we put each piece's rows at FLUX.1's offsets
# in a zero-padded up matrix, let the converter split it there, and cut every piece back to its own size.
_FLUX1_LINEAR1_ROWS = (3072, 3072, 3072, 12288)
_LINEAR1_STEM = re.compile(r"^lora_unet_single_blocks_\d+_linear1$")

# What diffusers' converters raise on keys they cannot place (a leftover-keys ValueError, a missing partner's
# KeyError, the linear1 size assert, a non-scalar alpha's RuntimeError, the mixture converter's NotImplementedError).
_CONVERTER_ERRORS = (ValueError, KeyError, AssertionError, RuntimeError, NotImplementedError, IndexError)

# LoraConfig's own defaults, for adapter metadata that leaves r or lora_alpha out.
_PEFT_DEFAULT_RANK = 8
_PEFT_DEFAULT_ALPHA = 8


class _Unplaceable(ValueError):
    """A converter's output that is not a pair of transformer LoRA factors."""


@dataclass
class _Unit:
    """One file module's tensors, renamed for the diffusers converter that will read them."""

    route: str  # "kohya", "xlabs" or "diffusers"
    name: str  # kohya stem, XLabs processor path or diffusers module
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # renamed key → tensor
    keys: list[str] = field(default_factory=list)  # the same keys as the file spells them


@dataclass
class _Piece:
    """A converted (module, down, up, scale), not yet checked against the model."""

    module: str
    down: torch.Tensor
    up: torch.Tensor
    scale: float

    @property
    def features(self) -> tuple[int, int] | None:
        """(in_features, out_features), or None for factors that are not matrices."""
        if self.down.ndim != 2 or self.up.ndim != 2:
            return None
        return int(self.down.shape[1]), int(self.up.shape[0])


def read_lora_file(path: str | Path, max_bytes: int = DEFAULT_MAX_LORA_BYTES) -> CanonicalLora:
    """Read a .safetensors LoRA of any FLUX format; InvalidLoraFileError (one line) if it cannot be used, and
    without reading it if it is not a regular file or is over `max_bytes`."""
    path = Path(path)
    return read_lora_bytes(read_regular_file(path, max_bytes), name=path.name)


def read_lora_bytes(data: bytes, name: str = "") -> CanonicalLora:
    """Like read_lora_file, for bytes already in memory; `name` labels errors and the result."""
    label = name or "LoRA file"
    tensors, metadata = _load_safetensors(data, label)
    units, unknown, file_format = _group_keys(tensors)
    adapter_config = _adapter_config(metadata, label)
    converted: list[tuple[list[str], list[_Piece]]] = []
    for unit in units:
        try:
            converted.append((unit.keys, _convert(unit, adapter_config)))
        except _CONVERTER_ERRORS:
            unknown.extend(unit.keys)
    layers, unplaced, family = _place(converted, label)
    unknown.extend(unplaced)
    if not layers:
        shown = ", ".join(sorted(unknown)[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise InvalidLoraFileError(f"no FLUX transformer layers found in {label}; unknown keys: {shown or 'none'}")
    return CanonicalLora(layers, file_format, family, sorted(unknown), hashlib.sha256(data).hexdigest(), name)


def _load_safetensors(data: bytes, label: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Check the container before handing it to safetensors, so every failure reads as one line naming the file."""
    if not data:
        raise InvalidLoraFileError(f"{label} is empty")
    header_length = int.from_bytes(data[:8], "little")
    # A safetensors header length can itself begin with 0x80 (e.g. 1408 bytes), so the magic bytes only count
    # when the file does not also look like safetensors (a header length that fits, then the JSON's opening brace).
    looks_like_safetensors = len(data) >= 9 and 0 < header_length <= len(data) - 8 and data[8:9] == b"{"
    if not looks_like_safetensors and data.startswith(_PICKLE_MAGIC):
        raise InvalidLoraFileError(
            f"{label} is a pickle/torch zip file; only .safetensors LoRAs are accepted (pickles can run code)"
        )
    if len(data) < 8:
        raise InvalidLoraFileError(f"{label} is too short to be a safetensors file ({len(data)} bytes)")
    if header_length == 0 or 8 + header_length > len(data):
        raise InvalidLoraFileError(
            f"{label} has a bad safetensors header length ({header_length} bytes declared, {len(data) - 8} in the file)"
        )
    try:
        header = json.loads(data[8 : 8 + header_length])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidLoraFileError(f"{label} has a safetensors header that is not JSON") from None
    if not isinstance(header, dict):
        raise InvalidLoraFileError(f"{label} has a safetensors header that is not a JSON object")
    body_length = len(data) - 8 - header_length
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise InvalidLoraFileError(f"{label}: tensor {key!r} has no valid data_offsets in the header")
        if not 0 <= offsets[0] <= offsets[1] <= body_length:
            raise InvalidLoraFileError(
                f"{label} is truncated or corrupt: tensor {key!r} lies at bytes {offsets[0]}-{offsets[1]} "
                f"of a {body_length}-byte data section"
            )
    try:
        tensors = safetensors.torch.load(data)
    except (safetensors.SafetensorError, KeyError, ValueError, TypeError) as error:
        reason = " ".join(str(error).split())
        raise InvalidLoraFileError(f"{label} could not be read as safetensors: {reason}") from None
    metadata = header.get("__metadata__")
    return tensors, metadata if isinstance(metadata, dict) else {}


def _recognise(key: str) -> tuple[str, str, str, str] | None:
    """(file format, converter route, unit name, key renamed for that route), or None for a key no route reads."""
    if match := _KOHYA_KEY.match(key):
        return "kohya", "kohya", match["stem"], key
    if match := _XLABS_KEY.match(key):
        return "xlabs", "xlabs", match["name"], key
    if match := _BFL_KEY.match(key):
        # BFL names are kohya's with dots. diffusers has no general converter for them (its BFL-control and fal
        # Kontext ones demand every one of FLUX.1's 19 + 38 blocks at 3072 wide), so we rename them to kohya's.
        stem = "lora_unet_" + match["path"].replace(".", "_")
        file_format = "comfyui" if match["prefix"] == "diffusion_model." else "bfl"
        return file_format, "kohya", stem, f"{stem}.{_TO_KOHYA.get(match['suffix'], match['suffix'])}"
    if match := _DIFFUSERS_KEY.match(key):
        module = match["module"]
        file_format = "comfyui" if match["prefix"] == "diffusion_model." else "diffusers"
        suffix = _TO_PEFT.get(match["suffix"], match["suffix"])
        return file_format, "diffusers", module, f"transformer.{module}.{suffix}"
    return None


def _group_keys(tensors: dict[str, torch.Tensor]) -> tuple[list[_Unit], list[str], str]:
    """Split the file into convertible units and unrecognised keys; the file's format is its most common one."""
    units: dict[tuple[str, str], _Unit] = {}
    unknown: list[str] = []
    formats: collections.Counter[str] = collections.Counter()
    for key, tensor in tensors.items():
        recognised = _recognise(key)
        if recognised is None:
            unknown.append(key)
            continue
        file_format, route, name, renamed = recognised
        unit = units.setdefault((route, name), _Unit(route, name))
        if renamed in unit.tensors:  # the same tensor spelled two ways; keep the first
            unknown.append(key)
            continue
        unit.tensors[renamed] = tensor
        unit.keys.append(key)
        formats[file_format] += 1
    file_format = formats.most_common(1)[0][0] if formats else "unknown"
    return list(units.values()), unknown, file_format


def _adapter_config(metadata: dict[str, str], label: str) -> dict[str, Any] | None:
    """The PEFT LoraConfig that diffusers saves as `lora_adapter_metadata`, if the file has one."""
    raw = metadata.get("lora_adapter_metadata")
    if raw is None:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        raise InvalidLoraFileError(f"{label}: lora_adapter_metadata is not JSON") from None
    if not isinstance(config, dict):
        raise InvalidLoraFileError(f"{label}: lora_adapter_metadata is not a JSON object")
    # FluxPipeline.save_lora_weights prefixes every field with its component; the model-level save does not.
    if any(key.startswith("transformer.") for key in config):
        config = {
            key.removeprefix("transformer."): value for key, value in config.items() if key.startswith("transformer.")
        }
    return config


def _convert(unit: _Unit, adapter_config: dict[str, Any] | None) -> list[_Piece]:
    if unit.route == "kohya":
        return _convert_kohya(unit)
    if unit.route == "xlabs":
        converted, _ = FluxLoraLoaderMixin.lora_state_dict(dict(unit.tensors), return_alphas=True)
        return _compact([_Piece(m, down, up, 1.0) for m, (down, up) in _pairs(converted).items()])  # XLabs has no alpha
    converted, alphas = FluxLoraLoaderMixin.lora_state_dict(dict(unit.tensors), return_alphas=True)
    pieces = []
    for module, (down, up) in _pairs(converted).items():
        alpha = (alphas or {}).get(f"transformer.{module}.alpha")
        scale = float(alpha) / down.shape[0] if alpha is not None else _config_scale(adapter_config, module)
        pieces.append(_Piece(module, down, up, scale))
    return pieces


def _convert_kohya(unit: _Unit) -> list[_Piece]:
    tensors = dict(unit.tensors)
    stem = unit.name
    down = tensors.get(f"{stem}.lora_down.weight")
    if down is None:
        raise _Unplaceable(f"{stem} has no lora_down")
    rank = down.shape[0]
    # Keep the factors as trained: take alpha out before converting (diffusers would multiply it into the
    # factors, and for final_layer it drops it altogether) and carry alpha / rank as the layer's scale.
    alpha = tensors.pop(f"{stem}.alpha", None)
    scale = float(alpha) / rank if alpha is not None else 1.0
    if stem.startswith("lora_transformer_"):
        # The mixture converter requires an alpha; alpha = rank is the neutral one.
        tensors[f"{stem}.alpha"] = torch.tensor(float(rank))
    true_rows = _pad_linear1(stem, tensors)
    converted, _ = FluxLoraLoaderMixin.lora_state_dict(tensors, return_alphas=True)
    pieces = [_Piece(m, down, up, scale) for m, (down, up) in _pairs(converted).items()]
    if true_rows is not None:
        rows_by_piece = dict(zip(keys.SINGLE_BLOCK["linear1"], true_rows))
        for piece in pieces:
            piece.up = piece.up[: rows_by_piece[piece.module.split(".", 2)[2]]]
    return _compact(pieces)


def _pad_linear1(stem: str, tensors: dict[str, torch.Tensor]) -> tuple[int, ...] | None:
    """Lay a small model's linear1 rows out at FLUX.1 offsets (see _FLUX1_LINEAR1_ROWS).

    Returns the true row counts of q, k, v and MLP, or None when there is nothing to pad.
    """
    down, up = tensors.get(f"{stem}.lora_down.weight"), tensors.get(f"{stem}.lora_up.weight")
    if not _LINEAR1_STEM.match(stem) or down is None or up is None or down.ndim != 2 or up.ndim != 2:
        return None
    inner = down.shape[1]
    rows = (inner, inner, inner, up.shape[0] - 3 * inner)
    if up.shape[0] == sum(_FLUX1_LINEAR1_ROWS) or not all(0 < r <= flux for r, flux in zip(rows, _FLUX1_LINEAR1_ROWS)):
        return None
    padded = up.new_zeros(sum(_FLUX1_LINEAR1_ROWS), up.shape[1])
    source = target = 0
    for size, flux_size in zip(rows, _FLUX1_LINEAR1_ROWS):
        padded[target : target + size] = up[source : source + size]
        source, target = source + size, target + flux_size
    tensors[f"{stem}.lora_up.weight"] = padded
    return rows


def _pairs(converted: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`transformer.<module>.lora_A/B.weight` → {module: (down, up)}; _place judges the module names.

    The kohya converter names embedder and final-layer modules without the `transformer.` prefix (and diffusers'
    own loader then skips them), so the prefix is optional here.
    """
    downs, ups = {}, {}
    for key, tensor in converted.items():
        module, _, suffix = key.removeprefix("transformer.").rpartition(".lora_")
        if suffix == "A.weight":
            downs[module] = tensor
        elif suffix == "B.weight":
            ups[module] = tensor
        else:
            raise _Unplaceable(key)
    if not downs or downs.keys() != ups.keys():
        raise _Unplaceable(f"unpaired LoRA factors: {sorted(downs.keys() ^ ups.keys())}")
    return {module: (downs[module], ups[module]) for module in downs}


def _compact(pieces: list[_Piece]) -> list[_Piece]:
    """Drop the all-zero columns of up (and their rows of down) in pieces split out of one fused tensor.

    When a file stacks pieces block-diagonally, splitting leaves each piece zero columns: the other pieces' ones
    where the converter copies the whole down to every piece (XLabs always), or the rank padding our writer adds
    for unequal ranks. Dropping them restores each piece's own rank and leaves ΔW unchanged.
    """
    if len(pieces) < 2:
        return pieces
    for piece in pieces:
        if piece.up.ndim == 2 and piece.down.ndim == 2 and piece.up.shape[1] == piece.down.shape[0]:
            keep = piece.up.ne(0).any(dim=0)
            if keep.any() and not keep.all():
                piece.down, piece.up = piece.down[keep], piece.up[:, keep]
    return pieces


def _config_scale(config: dict[str, Any] | None, module: str) -> float:
    """PEFT's scale for `module`: lora_alpha / r, per-module alpha_pattern and rank_pattern first; rsLoRA √r."""
    if not config:
        return 1.0
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    rank = rank_pattern.get(get_pattern_key(rank_pattern, module), config.get("r", _PEFT_DEFAULT_RANK))
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern, module), config.get("lora_alpha", _PEFT_DEFAULT_ALPHA))
    return float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else float(rank))


def _place(
    converted: list[tuple[list[str], list[_Piece]]], label: str
) -> tuple[dict[str, LoraLayer], list[str], str | None]:
    """Keep the pieces that are Linears of the LoRA's family (checking shapes); report the file keys of the rest."""
    family = _infer_family([piece for _, pieces in converted for piece in pieces])
    shapes = keys.linear_shapes(family) if family else None
    layers: dict[str, LoraLayer] = {}
    unknown: list[str] = []
    for file_keys, pieces in converted:
        if any(not _is_linear(piece.module, shapes) or piece.module in layers for piece in pieces):
            unknown.extend(file_keys)
            continue
        for piece in pieces:
            layers[piece.module] = _checked_layer(piece, shapes, family, label)
    return layers, unknown, family


def _infer_family(pieces: list[_Piece]) -> str | None:
    """The family whose hidden width is the in_features of a layer that reads the hidden state (q, k, v, ...)."""
    for piece in pieces:
        if keys.block_pattern(piece.module) in keys.inner_input_patterns() and piece.features is not None:
            return family_for_inner_dim(piece.features[0])
    # No such layer (e.g. only ff.net.2): the one family in which some layer has exactly its shape.
    fitting = [name for name in FAMILIES if any(keys.linear_shapes(name).get(p.module) == p.features for p in pieces)]
    return fitting[0] if len(fitting) == 1 else None


def _is_linear(module: str, shapes: dict[str, tuple[int, int]] | None) -> bool:
    if shapes is None:  # unknown family: at least a Linear name of the FLUX architecture
        return keys.block_pattern(module) in keys.flux_linear_patterns()
    return module in shapes  # also rejects block indices beyond the family's num_layers / num_single_layers


def _checked_layer(
    piece: _Piece, shapes: dict[str, tuple[int, int]] | None, family: str | None, label: str
) -> LoraLayer:
    try:
        layer = LoraLayer(piece.down, piece.up, piece.scale)
    except ValueError as error:
        raise InvalidLoraFileError(f"{label}: {piece.module}: {error}") from None
    if not (layer.down.is_floating_point() and layer.up.is_floating_point()):
        raise InvalidLoraFileError(
            f"{label}: {piece.module} has non-float factors ({layer.down.dtype}, {layer.up.dtype})"
        )
    expected = shapes.get(piece.module) if shapes else None
    if expected is not None and (layer.in_features, layer.out_features) != expected:
        raise InvalidLoraFileError(
            f"{label}: {piece.module} maps {layer.in_features} → {layer.out_features} features but the {family} "
            f"model's layer maps {expected[0]} → {expected[1]}"
        )
    return layer


def inspect_lora_file(path: str | Path, max_bytes: int = DEFAULT_MAX_LORA_BYTES) -> dict[str, Any]:
    """What a LoRA file is: format, family, number of modules, ranks (sorted unique list), unknown keys, sha256."""
    lora = read_lora_file(path, max_bytes)
    return {
        "format": lora.format,
        "family": lora.family,
        "modules": len(lora.layers),
        "ranks": sorted(set(lora.ranks.values())),
        "unknown_keys": lora.unknown_keys,
        "sha256": lora.sha256,
    }


# ---------------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Naming:
    """How a file format names the tensors of one target (see keys.Target)."""

    target: Callable[[str], keys.Target | None]
    stem: Callable[[str], str]
    down: str
    up: str
    alpha: str | None  # None: the format has no alpha, so scales are folded into up


_KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
_NAMINGS = {
    "kohya": _Naming(keys.bfl_target, lambda name: "lora_unet_" + name.replace(".", "_"), *_KOHYA_SUFFIXES),
    "comfyui": _Naming(keys.bfl_target, lambda name: "diffusion_model." + name, *_KOHYA_SUFFIXES),
    "bfl": _Naming(keys.bfl_target, lambda name: name, ".lora_A.weight", ".lora_B.weight", ".alpha"),
    "xlabs": _Naming(keys.xlabs_target, lambda name: name, ".down.weight", ".up.weight", None),
}
# Kohya's per-module ("mixture") names, for LoRAs whose fused groups are incomplete (e.g. q/k/v without proj_mlp).
_KOHYA_MIXTURE = _Naming(keys.mixture_target, lambda name: "lora_transformer_" + name.replace(".", "_"), *_KOHYA_SUFFIXES)


def write_lora_file(
    layers: dict[str, LoraLayer], path: str | Path, format: str, metadata: dict[str, Any] | None = None
) -> None:
    """Write `layers` (keyed by transformer module) as a .safetensors file in `format` (one of FORMATS).

    Raises ValueError naming the module when the format cannot express a layer. `metadata` goes into the
    safetensors header (non-string values as JSON).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown LoRA format {format!r}; known: {', '.join(FORMATS)}")
    if not layers:
        raise ValueError("no LoRA layers to write")
    header = {"format": "pt"}
    if format == "diffusers":
        tensors, adapter_config = _diffusers_tensors(layers)
        if adapter_config:
            header["lora_adapter_metadata"] = json.dumps(adapter_config, indent=2, sort_keys=True)
    else:
        tensors = _fused_tensors(layers, format)
    for key, value in (metadata or {}).items():
        header[key] = value if isinstance(value, str) else json.dumps(value)
    # Own contiguous CPU copies: safetensors refuses views and tensors sharing storage (stacked or split factors).
    owned = {key: tensor.detach().cpu().clone(memory_format=torch.contiguous_format) for key, tensor in tensors.items()}
    safetensors.torch.save_file(owned, str(path), metadata=header)


def _diffusers_tensors(layers: dict[str, LoraLayer]) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    tensors = {}
    for module, layer in layers.items():
        tensors[f"transformer.{module}.lora_A.weight"] = layer.down
        tensors[f"transformer.{module}.lora_B.weight"] = layer.up
    if all(layer.scale == 1.0 for layer in layers.values()):
        return tensors, None
    modules = sorted(layers)
    rank = layers[modules[0]].rank
    alpha = rank * layers[modules[0]].scale
    config = {
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": modules,
        "rank_pattern": {m: layers[m].rank for m in modules if layers[m].rank != rank},
        "alpha_pattern": {
            m: layers[m].rank * layers[m].scale for m in modules if layers[m].rank * layers[m].scale != alpha
        },
    }
    # FluxPipeline.save_lora_weights' layout: each LoraConfig field prefixed by its component.
    return tensors, {f"transformer.{key}": value for key, value in config.items()}


def _fused_tensors(layers: dict[str, LoraLayer], format: str) -> dict[str, torch.Tensor]:
    naming = _NAMINGS[format]
    targets = _targets(layers, naming, format)
    partial = next(((name, pieces) for name, pieces in targets.items() if any(p not in layers for p in pieces)), None)
    if partial is not None:
        name, pieces = partial
        if format != "kohya":
            present = ", ".join(p for p in pieces if p in layers)
            missing = ", ".join(p for p in pieces if p not in layers)
            raise ValueError(
                f"{format} stores {', '.join(pieces)} as one tensor ({name}); "
                f"it cannot hold {present} without {missing}"
            )
        # Kohya's fused names would hand the missing pieces zero layers on reading; its per-module names cannot.
        naming = _KOHYA_MIXTURE
        targets = _targets(layers, naming, f"kohya (per-module names, as {name} is only partly present)")
    tensors = {}
    for name, pieces in targets.items():
        down, up, scale = _stack([layers[piece] for piece in pieces])
        stem = naming.stem(name)
        tensors[stem + naming.down] = down
        if naming.alpha is None:
            tensors[stem + naming.up] = up * scale if scale != 1.0 else up
        else:
            tensors[stem + naming.up] = up
            tensors[stem + naming.alpha] = torch.tensor(float(down.shape[0] * scale))
    return tensors


def _targets(layers: dict[str, LoraLayer], naming: _Naming, format_label: str) -> dict[str, tuple[str, ...]]:
    targets = {}
    for module in layers:
        found = naming.target(module)
        if found is None:
            raise ValueError(
                f"cannot write {module} in the {format_label} format: it names only transformer-block linears"
                " (XLabs: only attention)"
            )
        targets[found[0]] = found[1]
    return targets


def _stack(pieces: list[LoraLayer]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One (down, up, scale) for layers whose outputs a file stacks row-wise: down = cat(Aᵢ), up = block-diag(Bᵢ).

    That is the layout diffusers' kohya converter recognises as "sparse" and splits back into exact pieces when all
    ranks are equal, so smaller ranks are zero-padded to the largest. Differing scales are folded into their Bᵢ.
    """
    if len(pieces) == 1:
        return pieces[0].down, pieces[0].up, pieces[0].scale
    rank = max(piece.rank for piece in pieces)
    same_scale = len({piece.scale for piece in pieces}) == 1
    downs = [F.pad(piece.down, (0, 0, 0, rank - piece.rank)) for piece in pieces]
    ups = [F.pad(piece.up if same_scale else piece.up * piece.scale, (0, rank - piece.rank)) for piece in pieces]
    return torch.cat(downs), torch.block_diag(*ups), pieces[0].scale if same_scale else 1.0
