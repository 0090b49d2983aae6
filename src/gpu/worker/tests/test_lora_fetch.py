"""LoRAs fetched by hash from a host's pool: kept only when the bytes match, once, within the cache's bytes."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from autolora_worker.lora_fetch import LoraFetcher, LoraFetchError

TOKEN = "pool-token"


class FakePool:
    """A host's GET /pool/<sha256>: serves `files`, counts requests, and can be told to lie or to stall."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.corrupt = False
        self.short = False
        pool = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                pool.requests.append(self.path)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_response(401)
                    self.end_headers()
                    return
                body = pool.files.get(self.path.removeprefix("/pool/"))
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                sent = bytes([body[0] ^ 1]) + body[1:] if pool.corrupt else body
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(sent[: len(sent) // 2] if pool.short else sent)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, size: int, seed: int) -> str:
        body = hashlib.sha256(str(seed).encode()).digest() * (size // 32)
        sha256 = hashlib.sha256(body).hexdigest()
        self.files[sha256] = body
        return sha256

    def close(self):
        self.server.shutdown()


@pytest.fixture
def pool():
    fake = FakePool()
    yield fake
    fake.close()


def test_a_fetched_lora_has_the_bytes_asked_for_and_is_fetched_once(pool, tmp_path):
    sha256 = pool.add(300_000, 1)
    fetcher = LoraFetcher([pool.url], TOKEN, tmp_path / "cache", max_bytes=10 << 20)
    with ThreadPoolExecutor(4) as jobs:  # four jobs wanting the same LoRA at once
        paths = list(jobs.map(lambda _: fetcher.path_for(sha256), range(4)))
    assert len(set(paths)) == 1
    with open(paths[0], "rb") as file:
        assert hashlib.sha256(file.read()).hexdigest() == sha256
    assert pool.requests == [f"/pool/{sha256}"]
    # A new worker process on the same folder finds it there.
    again = LoraFetcher([pool.url], TOKEN, tmp_path / "cache", max_bytes=10 << 20)
    assert again.path_for(sha256) == paths[0]
    assert len(pool.requests) == 1


def test_bytes_that_do_not_match_the_hash_are_never_kept(pool, tmp_path):
    sha256 = pool.add(100_000, 2)
    fetcher = LoraFetcher([pool.url], TOKEN, tmp_path, max_bytes=10 << 20)
    pool.corrupt = True
    with pytest.raises(LoraFetchError, match="not kept"):
        fetcher.path_for(sha256)
    pool.corrupt, pool.short = False, True
    with pytest.raises(LoraFetchError):
        fetcher.path_for(sha256)
    assert list(tmp_path.iterdir()) == []  # nothing partial left behind
    pool.short = False
    assert fetcher.path_for(sha256).endswith(f"{sha256}.safetensors")


def test_the_cache_stays_within_its_bytes_dropping_the_least_recently_used(pool, tmp_path):
    first, second, third = (pool.add(400_000, seed) for seed in (3, 4, 5))
    fetcher = LoraFetcher([pool.url], TOKEN, tmp_path, max_bytes=900_000)
    fetcher.path_for(first)
    fetcher.path_for(second)
    fetcher.path_for(first)  # used again: now the second is the least recently used
    fetcher.path_for(third)
    assert sorted(entry["sha256"] for entry in fetcher.cached()) == sorted([first, third])
    assert sum(entry["bytes"] for entry in fetcher.cached()) <= 900_000
    # A file a job holds is not dropped, even when it is the least recently used.
    fetcher.hold(first)
    fetcher.path_for(second)
    assert {entry["sha256"] for entry in fetcher.cached()} == {first, second}
    fetcher.release(first)


def test_a_lora_larger_than_the_cache_is_refused_before_it_is_read(pool, tmp_path):
    sha256 = pool.add(200_000, 6)
    fetcher = LoraFetcher([pool.url], TOKEN, tmp_path, max_bytes=100_000)
    with pytest.raises(LoraFetchError, match="--lora-cache-mb"):
        fetcher.path_for(sha256)
    assert list(tmp_path.iterdir()) == []


def test_pools_are_tried_in_order_and_refusals_say_why(pool, tmp_path):
    other = FakePool()
    try:
        sha256 = other.add(10_000, 7)
        fetcher = LoraFetcher([pool.url, other.url], TOKEN, tmp_path, max_bytes=1 << 20)
        assert fetcher.path_for(sha256)  # the first pool answers 404, the second has it
        missing = "ab" * 32
        with pytest.raises(LoraFetchError, match="does not have it.*does not have it"):
            fetcher.path_for(missing)
        wrong = LoraFetcher([pool.url], "guess", tmp_path / "wrong", max_bytes=1 << 20)
        with pytest.raises(LoraFetchError, match="AUTOLORA_WORKER_TOKEN"):
            wrong.path_for(pool.add(1_000, 8))
        unreachable = LoraFetcher(["http://127.0.0.1:9"], TOKEN, tmp_path / "down", max_bytes=1 << 20, timeout_s=2)
        with pytest.raises(LoraFetchError, match="could not be reached"):
            unreachable.path_for(sha256)
        with pytest.raises(LoraFetchError, match="not a sha256"):
            fetcher.path_for("../etc/passwd")
    finally:
        other.close()


def test_the_queue_password_comes_from_the_environment_and_never_shows():
    from autolora_worker.__main__ import queue_url
    from autolora_worker.queue_worker import redact

    assert queue_url("redis://10.0.0.5:6379", "p@ss/word") == "redis://:p%40ss%2Fword@10.0.0.5:6379"
    assert queue_url("rediss://10.0.0.5:6380/2", "") == "rediss://10.0.0.5:6380/2"
    assert queue_url("redis://:given@10.0.0.5:6379", "other") == "redis://:given@10.0.0.5:6379"
    with pytest.raises(SystemExit, match="redis:// or rediss://"):
        queue_url("http://10.0.0.5:6379", "x")
    assert redact("redis://:secret@10.0.0.5:6379") == "redis://***@10.0.0.5:6379"
    assert "secret" not in redact("rediss://user:secret@host:6380/0")


def test_an_ingest_through_the_queue_embeds_files_fetched_by_hash_each_failing_alone(pool, tmp_path):
    from pathlib import Path

    from autolora_worker.engine import Engine
    from autolora_worker.models import random_proving_ground
    from autolora_worker.protocol import LoraRef

    bundle = Path(__file__).resolve().parents[4] / "bundle" / "pool"
    hexagon = (bundle / "shape-hexagon-01.safetensors").read_bytes()
    stripes = (bundle / "style-striped-01.safetensors").read_bytes()
    sha_hexagon, sha_stripes = (hashlib.sha256(body).hexdigest() for body in (hexagon, stripes))
    pool.files[sha_hexagon] = hexagon
    engine = Engine(random_proving_ground(),
                    fetcher=LoraFetcher([pool.url], TOKEN, tmp_path / "cache", max_bytes=10 * len(hexagon)))
    answer = engine.embed_refs([
        LoraRef(sha256=sha_hexagon),
        LoraRef(sha256="0" * 64),  # in no pool
        LoraRef(sha256=sha_stripes, path=str(bundle / "style-striped-01.safetensors")),  # not in the pool either
    ])
    first, missing, also_missing = answer["results"]
    assert first["sha256"] == sha_hexagon and first["family"] == "proving-ground" and first["modules"] > 0
    assert missing["error"]["code"] == "lora-unavailable" and "000000000000" in missing["error"]["message"]
    # Named by hash, a file is fetched from the pools even where a path is given: the path is the host's.
    assert also_missing["error"]["code"] == "lora-unavailable"
    # A worker without pools reads the host's path, and checks it against the hash it was given.
    local = Engine(random_proving_ground())
    read, wrong = local.embed_refs([
        LoraRef(sha256=sha_stripes, path=str(bundle / "style-striped-01.safetensors")),
        LoraRef(sha256=sha_hexagon, path=str(bundle / "style-striped-01.safetensors")),
    ])["results"]
    assert read["sha256"] == sha_stripes
    assert wrong["error"]["code"] == "invalid-request" and sha_hexagon[:12] in wrong["error"]["message"]
