"""Command-line tools of the worker's LoRA reader (wired into `python -m autolora_worker`)."""

from __future__ import annotations

import json
import sys

from ..errors import InvalidLoraFileError
from .formats import inspect_lora_file

_SHOWN_UNKNOWN_KEYS = 5


def inspect_command(path: str, as_json: bool) -> int:
    """Print what a LoRA file is (JSON or a short summary) and return 0; if unusable, one `error:` line and 2."""
    try:
        info = inspect_lora_file(path)
    except InvalidLoraFileError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    ranks = "/".join(str(rank) for rank in info["ranks"])
    family = info["family"] or "an unknown family"
    print(f"{path}: {info['format']} LoRA for {family}, {info['modules']} modules, rank {ranks}")
    print(f"sha256 {info['sha256']}")
    unknown = info["unknown_keys"]
    if unknown:
        more = f" (+{len(unknown) - _SHOWN_UNKNOWN_KEYS} more)" if len(unknown) > _SHOWN_UNKNOWN_KEYS else ""
        print(f"{len(unknown)} unknown keys: {', '.join(unknown[:_SHOWN_UNKNOWN_KEYS])}{more}")
    return 0
