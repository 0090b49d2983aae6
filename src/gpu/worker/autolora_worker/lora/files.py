"""A LoRA file's bytes, read only if it is a regular file no larger than a limit.

A path comes from a request, so it may name anything: opening a FIFO waits for a writer (a thread lost for
good), /dev/zero never ends (memory exhausted), a directory cannot be read. Each is refused with a line that
says what the path is, before anything is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import InvalidLoraFileError

# The host's pool refuses LoRA files over 2 GiB too; community FLUX LoRAs are tens to hundreds of MB.
DEFAULT_MAX_LORA_BYTES = 2 << 30

_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def read_regular_file(path: Path, max_bytes: int = DEFAULT_MAX_LORA_BYTES) -> bytes:
    """The whole file; InvalidLoraFileError (one line naming the path) for anything else or anything bigger."""
    try:
        _check(path, os.stat(path), max_bytes)  # before opening: the open itself is what blocks on a FIFO
        # O_NONBLOCK: should the path have become a FIFO since the stat, the open returns at once and the fstat
        # below refuses it. On a regular file the flag changes nothing.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(descriptor, "rb") as handle:
            _check(path, os.fstat(handle.fileno()), max_bytes)  # what was opened, not what the path names now
            data = handle.read(max_bytes + 1)
    except OSError as error:
        raise InvalidLoraFileError(f"cannot read {path}: {error.strerror or error}") from None
    if len(data) > max_bytes:  # it grew while being read
        raise _too_large(path, len(data), max_bytes)
    return data


def _check(path: Path, status: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(status.st_mode):
        kind = next((name for test, name in _KINDS if test(status.st_mode)), "special file")
        raise InvalidLoraFileError(f"{path} is a {kind}, not a regular file; a LoRA is a .safetensors file")
    if status.st_size > max_bytes:
        raise _too_large(path, status.st_size, max_bytes)


def _too_large(path: Path, size: int, max_bytes: int) -> InvalidLoraFileError:
    return InvalidLoraFileError(f"{path} is too large: {size:,} bytes, over this worker's limit of "
                                f"{max_bytes / 2**20:g} MiB (serve --max-lora-mb)")
