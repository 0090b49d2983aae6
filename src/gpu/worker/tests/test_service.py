"""The worker's HTTP service, run for real as `python -m autolora_worker serve` in a subprocess."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autolora_worker.__main__ import serve_encoder, serve_evaluator, serve_paths
from autolora_worker.fusion import GateBank, gate_dims
from autolora_worker.lora.formats import write_lora_file
from autolora_worker.models import random_proving_ground

from conftest import modules_matching, random_lora

TOKEN = "test-token-" + "x" * 20
REQUEST_TIMEOUT_S = 1
WORKER_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = WORKER_ROOT.parents[2] / "bundle"  # the committed proving-ground bundle
RANDOM_ENCODER = "enc-random-model"  # the version of the encoder the worker below serves /embed with


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    # An (untrained) LoRA encoder for the seeded random model: the bundle's encoder reads the bundle model's layers,
    # whose shapes differ (a latent world), and a worker refuses an encoder that does not fit its model.
    from autolora_worker.encoder import LoraEncoder, layer_table, save_encoder

    folder = tmp_path_factory.mktemp("encoder")
    save_encoder(LoraEncoder(layer_table(random_proving_ground().transformer), seed=0), folder, RANDOM_ENCODER)
    return folder


@pytest.fixture(scope="module")
def worker(tmp_path_factory, encoder_dir):
    # No bundle: the worker serves the seeded random model the LoRA fixture below is shaped for.
    env = {**os.environ, "AUTOLORA_WORKER_TOKEN": TOKEN, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "AUTOLORA_BUNDLE": str(tmp_path_factory.mktemp("no-bundle") / "missing")}
    # Small limits, so that the tests of them are quick: LoRA files up to 1 MiB, 1 s to send a request.
    process = subprocess.Popen([sys.executable, "-m", "autolora_worker", "serve", "--port", "0", "--device", "cpu",
                                "--encoder", str(encoder_dir), "--evaluator", str(BUNDLE / "evaluator"),
                                "--max-lora-mb", "1",
                                "--request-timeout-s", str(REQUEST_TIMEOUT_S)],
                               cwd=WORKER_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line:
        process.kill()
        pytest.fail(f"worker did not start: {process.stderr.read()}")
    port = json.loads(line)["port"]
    yield f"http://127.0.0.1:{port}", process
    process.terminate()
    process.wait(timeout=10)


def call(url: str, path: str, body: dict | None = None, token: str | None = TOKEN, timeout: float = 60):
    request = urllib.request.Request(url + path, method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
        return response.status, response
    except urllib.error.HTTPError as error:
        return error.code, error


def events(response):
    for line in response:
        yield json.loads(line)


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    model = random_proving_ground().transformer  # same seeded config as the worker's stand-in model
    modules = [m for m in modules_matching(model, "attn.to_", "ff.net") if m.startswith("transformer_blocks.")]
    lora = random_lora(model, modules, rank=4, seed=1, magnitude=0.2)
    path = tmp_path_factory.mktemp("loras") / "stripes.safetensors"
    write_lora_file(lora.layers, path, "kohya")
    return path


def test_serve_defaults_to_the_bundle_model_and_gates(tmp_path):
    bundle = tmp_path / "bundle"
    assert serve_paths("proving-ground", None, None, bundle)[:2] == (None, None)  # no bundle: the random model
    (bundle / "gates").mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    (bundle / "gates" / "gates.safetensors").write_bytes(b"")
    model, gates, note = serve_paths("proving-ground", None, None, bundle)
    assert (model, gates) == (str(bundle / "model"), str(bundle / "gates" / "gates.safetensors"))
    assert str(bundle) in note
    assert serve_paths("proving-ground", None, "mine.safetensors", bundle)[1] == "mine.safetensors"
    assert serve_paths("proving-ground", "/models/pg", None, bundle) == ("/models/pg", None, None)
    assert serve_paths("flux", "/models/flux", None, bundle) == ("/models/flux", None, None)


def test_serve_uses_the_bundle_encoder_only_with_the_bundle_model(tmp_path):
    bundle = tmp_path / "bundle"
    assert serve_encoder("proving-ground", None, None, bundle) is None  # no bundle
    (bundle / "encoder").mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    assert serve_encoder("proving-ground", None, None, bundle) == str(bundle / "encoder")
    assert serve_encoder("proving-ground", None, "/enc", bundle) == "/enc"
    assert serve_encoder("proving-ground", "/models/pg", None, bundle) is None  # another model: not its encoder
    assert serve_encoder("flux", None, None, bundle) is None


def test_every_route_needs_the_bearer_token(worker):
    url, _ = worker
    for token in (None, "wrong", TOKEN + "x"):
        status, response = call(url, "/health", token=token)
        assert status == 401
        assert json.load(response)["error"]["code"] == "unauthorized"
        assert call(url, "/generate", {"prompt": "x"}, token=token)[0] == 401
    status, response = call(url, "/health")
    health = json.load(response)
    assert status == 200
    assert health["family"] == "proving-ground" and health["device"] == "cpu"
    assert health["gate_version"] == "untrained" and health["model_version"]


def test_generation_streams_progress_then_the_images(worker, lora_file):
    url, _ = worker
    status, response = call(url, "/generate", {"job_id": "job-1", "prompt": "a red hexagon", "seeds": [1, 2],
                                               "steps": 3, "loras": [{"path": str(lora_file), "scale": 0.8}],
                                               "fusion": "gated", "preview_every": 1})
    assert status == 200 and response.headers["Content-Type"] == "application/x-ndjson"
    stream = list(events(response))
    assert [e["type"] for e in stream] == ["job-start", "job-progress", "job-progress", "job-progress", "job-end"]
    assert [e["step"] for e in stream[1:4]] == [1, 2, 3] and all(e["total"] == 3 for e in stream[1:4])
    assert all("preview" in e for e in stream[1:4])
    end = stream[-1]
    # This worker has no trained gates: `gated` was fused directly, and the answer says so and why.
    assert end["fusion"] == "direct" and end["gate_version"] is None
    assert "no trained gates for proving-ground" in end["fusion_note"]
    assert [image["seed"] for image in end["images"]] == [1, 2]
    pixels = Image.open(io.BytesIO(base64.b64decode(end["images"][0]["png_base64"])))
    assert pixels.size == (64, 64)
    assert end["loras"][0]["format"] == "kohya" and len(end["loras"][0]["sha256"]) == 64
    cached = json.load(call(url, "/health")[1])["cached_loras"]
    assert cached[0]["sha256"] == end["loras"][0]["sha256"]


def test_cancel_stops_the_job_within_one_step(worker):
    url, _ = worker
    _, response = call(url, "/generate", {"job_id": "long", "prompt": "a star", "seeds": [1, 2, 3, 4],
                                          "steps": 200})
    stream = events(response)
    assert next(stream)["type"] == "job-start"
    assert next(stream)["type"] == "job-progress"
    status, cancel_response = call(url, "/cancel", {"job_id": "long"})
    assert status == 200
    at_step = json.load(cancel_response)["at_step"]
    rest = list(stream)
    assert rest[-1]["type"] == "job-error" and rest[-1]["code"] == "job-cancelled"
    last_step = max([e["step"] for e in rest if e["type"] == "job-progress"], default=at_step)
    assert last_step <= at_step + 1 < 200
    assert call(url, "/cancel", {"job_id": "long"})[0] == 404  # it is gone


def test_a_bad_lora_fails_that_request_only(worker, tmp_path, lora_file):
    url, process = worker
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    pickle_file = tmp_path / "old.safetensors"
    pickle_file.write_bytes(b"\x80\x04\x95" + b"\x00" * 40)
    for path in (broken, pickle_file, tmp_path / "missing.safetensors"):
        _, response = call(url, "/generate", {"prompt": "a ring", "steps": 1, "loras": [{"path": str(path)}]})
        stream = list(events(response))
        assert stream[-1]["type"] == "job-error", path
        assert path.name in stream[-1]["message"] and "\n" not in stream[-1]["message"]
    assert process.poll() is None
    _, response = call(url, "/generate", {"prompt": "a ring", "steps": 1, "loras": [{"path": str(lora_file)}]})
    assert list(events(response))[-1]["type"] == "job-end"


@pytest.mark.parametrize("body, field", [
    ({"prompt": "x", "seeds": ["one"]}, "seeds.0"),
    ({"prompt": "x", "steps": 0}, "steps"),
    ({"prompt": "x", "fusion": "average"}, "fusion"),
    ({"prompt": "x", "sampler": "ddim"}, "sampler"),
    ({"seeds": [1]}, "prompt"),
    ({"prompt": "x", "loras": [{"path": "a", "scale": 100}]}, "loras.0.scale"),
])
def test_bad_requests_get_400_naming_the_field(worker, body, field):
    url, _ = worker
    status, response = call(url, "/generate", body)
    assert status == 400
    assert f"'{field}'" in json.load(response)["error"]["message"]


def test_inspect_route(worker, lora_file, tmp_path):
    url, _ = worker
    status, response = call(url, "/inspect", {"path": str(lora_file)})
    report = json.load(response)
    assert status == 200 and report["format"] == "kohya" and report["family"] == "proving-ground"
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"PK\x03\x04 torch zip")
    status, response = call(url, "/inspect", {"path": str(junk)})
    assert status == 422 and json.load(response)["error"]["code"] == "invalid-lora-file"


def test_embed_route(worker, lora_file, tmp_path):
    url, _ = worker
    status, response = call(url, "/embed", {"path": str(lora_file)})
    report = json.load(response)
    assert status == 200 and report["format"] == "kohya" and report["family"] == "proving-ground"
    assert report["dim"] == len(report["embedding"]) and report["encoder_version"]
    assert abs(sum(value * value for value in report["embedding"]) - 1.0) < 1e-3  # a unit vector, for cosine search
    status, again = call(url, "/embed", {"path": str(lora_file)})
    assert json.load(again)["embedding"] == report["embedding"]  # deterministic: ingest twice, same vector
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x02 pickle")
    status, response = call(url, "/embed", {"path": str(junk)})
    assert status == 422 and "pickle" in json.load(response)["error"]["message"]
    status, response = call(url, "/embed", {"path": str(tmp_path / "absent.safetensors")})
    assert status == 422 and "absent.safetensors" in json.load(response)["error"]["message"]


def test_embed_route_takes_many_files_and_a_bad_one_fails_alone(worker, lora_file, tmp_path):
    url, _ = worker
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x02 pickle")
    other = tmp_path / "other.safetensors"
    other.write_bytes((BUNDLE / "pool" / "shape-hexagon-01.safetensors").read_bytes())
    paths = [str(lora_file), str(junk), str(other), str(tmp_path / "absent.safetensors"), str(lora_file)]
    status, response = call(url, "/embed", {"paths": paths})
    results = json.load(response)["results"]
    assert status == 200 and len(results) == len(paths)
    _, single = call(url, "/embed", {"path": str(lora_file)})
    single = json.load(single)
    # Embedded together or alone, a LoRA gets the same vector (to float rounding: batches pad other layers).
    for together in (results[0], results[4]):
        assert together["sha256"] == single["sha256"] and together["encoder_version"] == single["encoder_version"]
        assert max(abs(a - b) for a, b in zip(together["embedding"], single["embedding"])) < 1e-4
    assert results[2]["family"] == "proving-ground" and results[2]["sha256"] != single["sha256"]
    assert results[1]["error"]["code"] == "invalid-lora-file" and "pickle" in results[1]["error"]["message"]
    assert "absent.safetensors" in results[3]["error"]["message"]
    for body in ({"path": str(lora_file), "paths": [str(lora_file)]}, {}, {"paths": []}):
        status, response = call(url, "/embed", body)
        assert status == 400 and json.load(response)["error"]["code"] == "invalid-request", body


@pytest.fixture
def unreadable(tmp_path):
    """Paths a LoRA must never be read from, and what the answer must call each."""
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    big = tmp_path / "big.safetensors"
    big.write_bytes(b"\0" * ((1 << 20) + 1))  # one byte over the fixture's --max-lora-mb 1
    return [(fifo, "named pipe (FIFO), not a regular file"),
            (Path("/dev/zero"), "character device, not a regular file"),
            (tmp_path, "directory, not a regular file"),
            (big, "over this worker's limit of 1 MiB (serve --max-lora-mb)")]


@pytest.mark.parametrize("route", ["/inspect", "/embed"])
def test_only_regular_files_up_to_the_size_limit_are_read(worker, unreadable, route):
    url, _ = worker
    for path, problem in unreadable:
        # A FIFO would block the reading thread for good and /dev/zero fill the memory: both must be refused unread.
        status, response = call(url, route, {"path": str(path)}, timeout=10)
        error = json.load(response)["error"]
        assert status == 422 and error["code"] == "invalid-lora-file", path
        assert str(path) in error["message"] and problem in error["message"], error["message"]
    assert call(url, "/health")[0] == 200


def test_a_generation_with_a_lora_that_is_no_regular_file_fails_at_once(worker, unreadable):
    url, _ = worker
    for path, problem in unreadable:
        _, response = call(url, "/generate", {"prompt": "a ring", "steps": 1, "loras": [{"path": str(path)}]},
                            timeout=10)
        end = list(events(response))[-1]
        assert end["type"] == "job-error" and problem in end["message"], end


def test_a_client_that_sends_half_a_request_is_dropped(worker):
    url, _ = worker
    port = int(url.rsplit(":", 1)[1])
    halves = [b"POST /inspect HTTP/1.1\r\nHost: worker\r\n",  # headers never finished
              b"POST /inspect HTTP/1.1\r\nHost: worker\r\nAuthorization: Bearer " + TOKEN.encode()
              + b"\r\nContent-Length: 100\r\n\r\n{\"path\": "]  # a body cut short
    for half in halves:
        with socket.create_connection(("127.0.0.1", port)) as connection:
            connection.sendall(half)
            connection.settimeout(REQUEST_TIMEOUT_S + 14)  # generous for a loaded machine
            started = time.monotonic()
            assert connection.recv(1024) == b"", "the worker closes the connection without an answer"
            assert time.monotonic() - started < REQUEST_TIMEOUT_S + 14
    assert call(url, "/health")[0] == 200


def test_a_stream_may_outlast_the_request_timeout(worker):
    url, _ = worker
    _, response = call(url, "/generate", {"job_id": "long-stream", "prompt": "a star", "seeds": [1], "steps": 200})
    stream = list(events(response))
    assert stream[-1]["type"] == "job-end"
    assert stream[-1]["timings"]["total_ms"] > 1000 * REQUEST_TIMEOUT_S, "too quick to show anything on this machine"


def test_a_bad_content_length_is_a_clear_400(worker):
    url, _ = worker
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(b"POST /inspect HTTP/1.1\r\nHost: worker\r\nAuthorization: Bearer " + TOKEN.encode()
                           + b"\r\nContent-Length: -5\r\n\r\n")
        connection.settimeout(15)
        answer = connection.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 400") and "Content-Length" in answer
    assert "Connection: close" in answer  # the body's end is unknown, so nothing more can be read on it


def test_a_worker_without_an_encoder_still_reads_the_lora_and_says_why_it_has_no_embedding():
    from autolora_worker.engine import Engine

    engine = Engine(random_proving_ground())
    answer = engine.embed(str(BUNDLE / "pool" / "shape-hexagon-01.safetensors"))
    assert answer["embedding"] is None and answer["encoder_version"] is None
    assert "no LoRA encoder for proving-ground" in answer["no_embedding"]
    assert answer["family"] == "proving-ground" and answer["modules"] > 0 and len(answer["sha256"]) == 64


def _png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_judge_names_what_a_picture_shows_and_refuses_what_it_cannot_judge(worker):
    from autolora_worker.world.render import Scene, render

    url, _ = worker
    scenes = [Scene("hexagon", "striped", "red", 0.7, 0.5, 0.5, 0.0, (128, 128, 128), seed=7),
              Scene("star", "dotted", "blue", 0.7, 0.5, 0.5, 0.0, (100, 100, 100), seed=8)]
    status, response = call(url, "/judge", {"images": [_png(render(scene)) for scene in scenes]})
    assert status == 200
    labels = json.load(response)["labels"]
    assert labels == [{"shape": s.shape, "style": s.style, "colour": s.colour} for s in scenes]

    # What a chat shows: the same picture enlarged 4x by nearest neighbour, judged the same
    enlarged = render(scenes[1]).repeat(4, axis=0).repeat(4, axis=1)
    status, response = call(url, "/judge", {"images": [_png(enlarged)]})
    assert json.load(response)["labels"] == labels[1:]

    small = _png(np.zeros((32, 32, 3), np.uint8))
    for images, message in (([small], "field 'images.0': the evaluator judges 64x64 images (or square whole "
                                      "multiples up to 2048), got 32x32"),
                            ([_png(np.zeros((64, 128, 3), np.uint8))], "got 128x64"),
                            ([_png(render(scenes[0])), "bm90IGEgcG5n"], "field 'images.1': not a base64 PNG"),
                            ([], "field 'images'")):
        status, response = call(url, "/judge", {"images": images})
        assert status == 400 and message in json.load(response)["error"]["message"]


def test_only_a_worker_with_an_evaluator_judges(tmp_path):
    from autolora_worker.engine import Engine
    from autolora_worker.errors import NoEvaluatorError

    with pytest.raises(NoEvaluatorError, match="no image evaluator: /judge scores proving-ground images"):
        Engine(random_proving_ground()).judge([_png(np.zeros((64, 64, 3), np.uint8))])
    bundle = tmp_path / "bundle"
    (bundle / "evaluator").mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    assert serve_evaluator("proving-ground", None, None, bundle) == str(bundle / "evaluator")
    assert serve_evaluator("proving-ground", "/models/pg", None, bundle) is None  # another model: not its judge
    assert serve_evaluator("flux", "/models/flux", None, bundle) is None


def test_reload_gates_swaps_them_without_a_restart_and_refuses_a_bad_file(worker, tmp_path):
    url, _ = worker
    before = json.load(call(url, "/health")[1])["gate_version"]
    model = random_proving_ground().transformer
    path = tmp_path / "promoted.safetensors"
    GateBank(gate_dims(model), seed=5, family="proving-ground").save(path, version="gates-promoted-1")
    status, response = call(url, "/reload-gates", {"path": str(path)})
    assert status == 200 and json.load(response) == {"gate_version": "gates-promoted-1", "previous": before}
    assert json.load(call(url, "/health")[1])["gate_version"] == "gates-promoted-1"
    status, response = call(url, "/generate", {"job_id": "after-reload", "prompt": "a star", "seeds": [3], "steps": 2,
                                               "fusion": "gated"})
    end = list(events(response))[-1]
    assert status == 200 and end["gate_version"] == "gates-promoted-1"
    assert end["fusion"] == "gated" and "fusion_note" not in end  # trained gates now: no fallback
    (tmp_path / "broken.safetensors").write_bytes(b"not gates")
    status, response = call(url, "/reload-gates", {"path": str(tmp_path / "broken.safetensors")})
    assert status == 422 and json.load(response)["error"]["code"] == "invalid-gates"
    assert json.load(call(url, "/health")[1])["gate_version"] == "gates-promoted-1"


def test_reload_encoder_swaps_it_and_refuses_a_folder_that_does_not_fit(worker, tmp_path):
    url, _ = worker
    before = json.load(call(url, "/health")[1])["encoder_version"]
    assert before == RANDOM_ENCODER
    status, response = call(url, "/reload-encoder", {"path": str(tmp_path / "missing")})
    assert status == 422 and json.load(response)["error"]["code"] == "invalid-encoder"
    assert json.load(call(url, "/health")[1])["encoder_version"] == before
    # The bundle's encoder reads the latent world's layers: it does not fit this worker's model, and is refused.
    status, response = call(url, "/reload-encoder", {"path": str(BUNDLE / "encoder")})
    assert status == 422 and json.load(response)["error"]["code"] == "invalid-encoder"
    assert json.load(call(url, "/health")[1])["encoder_version"] == before
    from autolora_worker.encoder import LoraEncoder, layer_table, save_encoder

    save_encoder(LoraEncoder(layer_table(random_proving_ground().transformer), seed=1), tmp_path / "next", "enc-next")
    status, response = call(url, "/reload-encoder", {"path": str(tmp_path / "next")})
    assert status == 200 and json.load(call(url, "/health")[1])["encoder_version"] == "enc-next"


def test_embed_many_gives_each_lora_the_same_vector_however_the_files_are_grouped(encoder_dir, monkeypatch, tmp_path):
    import autolora_worker.engine as engine_module
    from autolora_worker.engine import Engine

    model = random_proving_ground()
    engine = Engine(model, encoder_path=encoder_dir)
    modules = [m for m in modules_matching(model.transformer, "attn.to_", "ff.net") if m.startswith("transformer_blocks.")]
    paths = []
    for seed in range(4):
        path = tmp_path / f"grouping-{seed}.safetensors"
        write_lora_file(random_lora(model.transformer, modules[seed:], rank=2 + seed, seed=seed).layers, path, "diffusers")
        paths.append(str(path))
    together = engine.embed_many(paths)
    monkeypatch.setattr(engine_module, "EMBED_GROUP_BYTES", 1)  # every file its own group
    alone = engine.embed_many(paths)
    for a, b in zip(together, alone):
        assert a["sha256"] == b["sha256"] and max(abs(x - y) for x, y in zip(a["embedding"], b["embedding"])) < 1e-5
    assert len({answer["sha256"] for answer in together}) == 4
