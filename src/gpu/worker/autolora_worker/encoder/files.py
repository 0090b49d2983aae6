"""The LoRA encoder's folder: `encoder.safetensors` (weights, stored in half precision) and `encoder.json` (layer
table, sizes, version, the weights' sha256), written atomically and checked when read back."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ModelLoadError
from .model import EncoderLayer, LoraEncoder, layer_table

ENCODER_FORMAT = "autolora-lora-encoder"
FORMAT_VERSION = 1
CONFIG_NAME = "encoder.json"
WEIGHTS_NAME = "encoder.safetensors"


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


def load_encoder(folder: str | Path, model: nn.Module | None = None, device: str | torch.device = "cpu", *,
                 table: Sequence[EncoderLayer] | None = None) -> LoraEncoder:
    """The encoder saved in `folder`, in eval mode with gradients off. FileNotFoundError if there is none;
    ModelLoadError for a foreign or damaged folder, or for a layer table that is not `model`'s (its wrapped
    linears) or not `table` (e.g. `family_layer_table`'s; give one of the two)."""
    if model is not None and table is not None:
        raise ValueError("load_encoder checks against a model or a layer table, not both")
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
    if model is not None or table is not None:
        check_layer_table(encoder, model if table is None else table, str(folder))
    encoder.version = config["version"]
    return encoder.to(device).eval().requires_grad_(False)


def check_layer_table(encoder: LoraEncoder, model: nn.Module | Sequence[EncoderLayer],
                      label: str = "the LoRA encoder") -> None:
    """ModelLoadError naming the first difference if the encoder was not built for this model's wrapped linears
    (or for this layer table)."""
    expected = layer_table(model) if isinstance(model, nn.Module) else list(model)
    if list(encoder.table) == expected:
        return
    for position, (ours, theirs) in enumerate(zip(encoder.table, expected)):
        if ours != theirs:
            raise ModelLoadError(f"{label} was built for another model: table layer {position} is {ours.name} "
                                 f"{ours.in_features}→{ours.out_features}, the model has {theirs.name} "
                                 f"{theirs.in_features}→{theirs.out_features}")
    raise ModelLoadError(f"{label} was built for another model: {len(encoder.table)} table layers, the model has "
                         f"{len(expected)}")
