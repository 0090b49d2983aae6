"""LoRA files fetched by sha256 from the hosts' pools, kept in a folder bounded in bytes.

A worker on another machine cannot read a host's pool folder, so a job names each LoRA by its sha256 and the
worker fetches the file once (`GET <pool>/pool/<sha256>` with the worker token), hashing it as it streams to disk.
A file is kept only when its hash is the one asked for, so a broken transfer or a wrong answer never reaches the
model, and the same bytes are never fetched twice while they fit the cache. Least recently used files go first.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path

from .errors import WorkerError

SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20
SUFFIX = ".safetensors"


class LoraFetchError(WorkerError):
    """A LoRA named by hash that no host would give, or whose bytes did not match the hash."""

    code = "lora-unavailable"


class LoraFetcher:
    """`path_for(sha256)`: a local file with exactly those bytes, fetched from the first pool that has it.

    `pools` are the hosts' base URLs (tried in order: a 404 passes to the next); `folder` holds the cache;
    `max_bytes` bounds it (one file larger than that is refused before it is read in full).
    """

    def __init__(self, pools: list[str], token: str, folder: str | Path, max_bytes: int, timeout_s: float = 60.0):
        if not pools:
            raise ValueError("give at least one pool URL")
        self.pools = [pool.rstrip("/") for pool in pools]
        self._token = token
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}
        self._in_use: dict[str, int] = {}
        for stale in self.folder.glob(".*.part"):  # a transfer a crash cut short
            stale.unlink(missing_ok=True)
        # Use order in memory, not the files' mtimes: the device cache keys a file by its mtime, so touching it on
        # every use would make that cache read it again. Files found at start keep their mtimes' order.
        self._clock = 0
        self._used: dict[str, int] = {}
        for path in sorted(self.folder.glob(f"*{SUFFIX}"), key=lambda path: path.stat().st_mtime_ns):
            self._touch(path.name[:-len(SUFFIX)])

    def path_for(self, sha256: str) -> str:
        """The cached file for `sha256`, fetched first if it is not here. Raises LoraFetchError."""
        if not SHA256.match(sha256):
            raise LoraFetchError(f"'{sha256}' is not a sha256 (64 lowercase hex digits)")
        target = self.folder / f"{sha256}{SUFFIX}"
        with self._lock:
            fetching = self._fetching.setdefault(sha256, threading.Lock())
        with fetching:  # one transfer per file, however many jobs want it at once
            if target.exists():
                self._touch(sha256)
                return str(target)
            self._fetch(sha256, target)
            self._touch(sha256)
        self._evict(keep=target)
        return str(target)

    def hold(self, sha256: str) -> None:
        """Keep this file from eviction until `release` (a job is reading it)."""
        with self._lock:
            self._in_use[sha256] = self._in_use.get(sha256, 0) + 1

    def release(self, sha256: str) -> None:
        with self._lock:
            left = self._in_use.get(sha256, 0) - 1
            if left > 0:
                self._in_use[sha256] = left
            else:
                self._in_use.pop(sha256, None)

    def cached(self) -> list[dict]:
        """The cached files, most recently used first."""
        files = sorted(self.folder.glob(f"*{SUFFIX}"), key=self._last_used, reverse=True)
        return [{"sha256": path.name[:-len(SUFFIX)], "bytes": path.stat().st_size} for path in files]

    def _touch(self, sha256: str) -> None:
        with self._lock:
            self._clock += 1
            self._used[sha256] = self._clock

    def _last_used(self, path: Path) -> int:
        return self._used.get(path.name[:-len(SUFFIX)], 0)

    def _fetch(self, sha256: str, target: Path) -> None:
        refusals = []
        for pool in self.pools:
            url = f"{pool}/pool/{sha256}"
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self._token}"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    self._receive(response, sha256, target, url)
                return
            except urllib.error.HTTPError as error:
                if error.code == 404:
                    refusals.append(f"{pool} does not have it")
                    continue
                if error.code in (401, 403):
                    raise LoraFetchError(f"{pool} refused this worker's token (HTTP {error.code}) for LoRA "
                                         f"{sha256[:12]}: the host and the worker must share AUTOLORA_WORKER_TOKEN")
                refusals.append(f"{pool} answered HTTP {error.code}")
            except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
                reason = getattr(error, "reason", error)
                refusals.append(f"{pool} could not be reached or broke off ({reason})")
        raise LoraFetchError(f"LoRA {sha256[:12]} could not be fetched: {'; '.join(refusals)}")

    def _receive(self, response, sha256: str, target: Path, url: str) -> None:
        declared = response.headers.get("Content-Length")
        if declared is not None and int(declared) > self.max_bytes:
            raise LoraFetchError(f"LoRA {sha256[:12]} is {int(declared) >> 20} MiB, more than this worker's LoRA cache "
                                 f"holds ({self.max_bytes >> 20} MiB): raise --lora-cache-mb")
        partial = self.folder / f".{sha256}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(partial, "wb") as out:
                while chunk := response.read(CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise LoraFetchError(f"LoRA {sha256[:12]} from {url} is larger than this worker's LoRA cache "
                                             f"({self.max_bytes >> 20} MiB): raise --lora-cache-mb")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if declared is not None and size != int(declared):
                raise LoraFetchError(f"LoRA {sha256[:12]} from {url} ended after {size} of {declared} bytes")
            if digest.hexdigest() != sha256:
                raise LoraFetchError(f"{url} sent bytes whose sha256 is {digest.hexdigest()[:12]}, not "
                                     f"{sha256[:12]}: not kept")
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)

    def _evict(self, keep: Path) -> None:
        """Drop least recently used files until the cache fits, never `keep` or a file a job holds."""
        with self._lock:
            held = {f"{sha256}{SUFFIX}" for sha256 in self._in_use}
        files = sorted(self.folder.glob(f"*{SUFFIX}"), key=self._last_used)
        total = sum(path.stat().st_size for path in files)
        for path in files:
            if total <= self.max_bytes:
                break
            if path == keep or path.name in held:
                continue
            total -= path.stat().st_size
            path.unlink(missing_ok=True)
            with self._lock:
                self._used.pop(path.name[:-len(SUFFIX)], None)
