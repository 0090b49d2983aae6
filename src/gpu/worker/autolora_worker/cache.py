"""An LRU cache of LoRAs already read, canonicalised and moved to the device, bounded in bytes."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Callable

from .lora.canonical import CanonicalLora


class LoraCache:
    def __init__(self, max_bytes: int, load: Callable[[str], CanonicalLora]):
        self.max_bytes = max_bytes
        self._load = load
        self._entries: OrderedDict[tuple, CanonicalLora] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(path: str) -> tuple:
        # A file replaced in place (same path, new bytes) must not be served from the cache.
        stat = os.stat(path)
        return (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)

    def get(self, path: str) -> CanonicalLora:
        key = self._key(path)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        lora = self._load(path)  # outside the lock: reading a large file must not block other lookups
        with self._lock:
            self._entries[key] = lora
            self._entries.move_to_end(key)
            while len(self._entries) > 1 and self.total_bytes() > self.max_bytes:
                self._entries.popitem(last=False)
        return lora

    def total_bytes(self) -> int:
        return sum(lora.nbytes() for lora in self._entries.values())

    def describe(self) -> list[dict]:
        with self._lock:
            return [{"sha256": lora.sha256, "name": lora.name, "bytes": lora.nbytes()}
                    for lora in reversed(self._entries.values())]
