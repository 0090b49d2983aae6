"""Where the embedded default lives: the committed proving-ground bundle and the layout inside it.

bundle/
  manifest.json          versions, sha256 of every file, build settings, timings and the build gates' values
  README.md              the build gates, each with its bound, measured value and verdict
  model/                 the trained proving-ground base model (load_backbone('proving-ground', bundle/model))
  pool/pool.json         one record per LoRA: file, format, concept, kind, rank, layers, split, previews
  pool/*.safetensors     the LoRA pool, in a mix of community file formats
  previews/*.png         1-5 renders per LoRA, captions in pool.json
  encoder/               the LoRA weight encoder (eq. 1-3)
  gates/gates.safetensors
  evaluator/             shape / style / colour classifiers standing in for CLIP-style scores

The ONNX export of the text encoder is not committed (about 90 MB); it is rebuilt from the pip-installed MiniLM
weights into build/text-encoder/ on demand.
"""

from __future__ import annotations

import os
from pathlib import Path

BUNDLE_ENV = "AUTOLORA_BUNDLE"


def repo_root() -> Path:
    # world/ -> autolora_worker/ -> worker/ -> gpu/ -> src/ -> repository root
    return Path(__file__).resolve().parents[5]


def default_bundle_dir() -> Path:
    """The bundle the worker serves when nothing else is configured: $AUTOLORA_BUNDLE, else <repo>/bundle."""
    configured = os.environ.get(BUNDLE_ENV)
    return Path(configured) if configured else repo_root() / "bundle"


class BundlePaths:
    """The bundle's layout (see the module docstring), as paths under one root."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest = self.root / "manifest.json"
        self.readme = self.root / "README.md"
        self.model = self.root / "model"
        self.pool = self.root / "pool"
        self.pool_index = self.pool / "pool.json"
        self.previews = self.root / "previews"
        self.encoder = self.root / "encoder"
        self.gates = self.root / "gates" / "gates.safetensors"
        self.evaluator = self.root / "evaluator"
