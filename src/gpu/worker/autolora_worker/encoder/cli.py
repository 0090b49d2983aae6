"""`python -m autolora_worker embed FILE`: one LoRA file's embedding, by the LoRA encoder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import IncompatibleLoraError, InvalidLoraFileError, ModelLoadError
from ..lora.formats import read_lora_file
from .files import load_encoder
from .model import embed_loras


def embed_command(path: str, as_json: bool, encoder_folder: str | None) -> int:
    """`python -m autolora_worker embed FILE`: print the LoRA's embedding; one `error:` line and 2 if the file or
    the encoder cannot be used."""
    # The embedded default's encoder when none is named, as `serve` does for the proving ground.
    from ..world.bundle import BundlePaths, default_bundle_dir

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
