"""The worker's GPU check: fusion step times on FLUX.1 and a 4-step generation through the HTTP API with imported gates.

Run by scripts/gpu-check.sh. Full mode (CUDA): the full-size random-initialised FLUX.1 transformer in bf16 at 1024²,
`none` / `direct` / `gated` at k = 1, 2, 3, then `gates import` of a synthetic DiffSynth gate file and a worker
serving it. `--tiny`: the same on the CPU on the tiny stand-in (`tiny-flux`), in under a minute on 2 cores.
One JSON object per line on stdout, a summary line last; the exit status is 1 when any step failed.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Iterator
from unittest import mock

STARTED = time.monotonic()  # before the imports below, which take seconds: the summary's time includes them

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from autolora_worker import bench  # noqa: E402
from autolora_worker.families import get_family  # noqa: E402
from autolora_worker.fusion import STRATEGIES, GateBank, fused_layers, gate_dims  # noqa: E402
from autolora_worker.fusion.diffsynth import PARAMETERS, SEPARATOR, SOURCE_PREFIX, source_layout  # noqa: E402
from autolora_worker.lora.canonical import LoraLayer  # noqa: E402
from autolora_worker.lora.formats import write_lora_file  # noqa: E402
from autolora_worker.models import meta_flux_transformer  # noqa: E402
from autolora_worker.tiny_flux import MAX_SEQUENCE_LENGTH, TRANSFORMER as TINY_TRANSFORMER  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Mode:
    device: str
    size: int  # image side in pixels, for the fusion rows and the generation
    text_tokens: int  # T5 tokens the fusion rows feed the transformer
    rank: int  # rank of the random LoRAs in the fusion rows
    repeats: int  # timed rounds per fusion row after one warm-up (the median is reported)
    model_write_s: float  # how long `tiny-flux` may take to write the model folder
    worker_start_s: float  # how long a worker may take to load its model and listen
    generate_s: float  # how long one 4-step /generate may take, start to job-end
    threads: int | None = None  # CPU threads for this process and the worker's (None: torch's default)


MODES = {
    # FLUX.1-dev's own case (1024², 512 T5 tokens) with the rank LoRAs usually have; 3 rounds as `bench fusion` does.
    # A worker building 12B random parameters on the GPU should listen within a minute; 300 s leave room for a slow
    # first CUDA start.
    "full": Mode(device="cuda", size=1024, text_tokens=512, rank=16, repeats=3, model_write_s=300, worker_start_s=300,
                 generate_s=300),
    # 256² (256 image tokens) and the stand-in's own 32 T5 tokens keep the whole run under a minute on 2 CPU cores.
    # One thread: a tiny model's step is too small to split, and on 2 shared cores a second thread waiting for a busy
    # core made the fusion rows 9x slower (17 s against 1.8 s here, with another process on one core).
    "tiny": Mode(device="cpu", size=256, text_tokens=MAX_SEQUENCE_LENGTH, rank=4, repeats=3, model_write_s=120,
                 worker_start_s=120, generate_s=120, threads=1),
}
# The strategies the check times (dare and klora are `bench fusion`'s business).
CHECKED_STRATEGIES = ("none", "direct", "gated")
GENERATION_STEPS = 4
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
# The LoRAs the generation fuses: rank 4 on attention linears of the first two double blocks and the first single
# block, the layers every FLUX.1 LoRA format can express.
LORA_RANK = 4
LORA_MODULES = tuple(f"transformer_blocks.{block}.attn.{linear}" for block in (0, 1)
                     for linear in ("to_q", "to_k", "to_v", "to_out.0")) + tuple(
    f"single_transformer_blocks.0.attn.{linear}" for linear in ("to_q", "to_k", "to_v"))
# The option of `tiny-flux` that writes a stand-in with FLUX.1's full transformer config and `"random_init": true`
# in autolora.json, so that a worker builds the random transformer itself instead of reading ~24 GB of weights.
FULL_SIZE_OPTION = "--full-size"


class CheckFailed(Exception):
    """A step's check did not hold; the message says what was seen."""


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)


# ---- the files the generation needs ------------------------------------------------------------------------------

def write_synthetic_diffsynth_gates(path: Path, seed: int = 0) -> int:
    """DiffSynth-Studio's FluxLoraPatcher layout for FLUX.1 (every gate at its full fused width), random bf16 values
    as the published file holds; returns the number of gates."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, slices in source_layout().items():
        width = sum(slice_width for _, slice_width in slices)
        for parameter in PARAMETERS:
            key = f"{SOURCE_PREFIX}{module.replace('.', SEPARATOR)}.{parameter}"
            tensors[key] = torch.randn(width, generator=generator).to(torch.bfloat16)
    save_file(tensors, str(path))
    return len(source_layout())


def write_loras(model: torch.nn.Module, folder: Path, count: int = 2) -> list[Path]:
    """`count` LoRA files (diffusers format) shaped for `model`'s linears, random factors, one seed each."""
    layers = fused_layers(model)
    paths = []
    for index in range(count):
        generator = torch.Generator().manual_seed(index)
        factors = {module: LoraLayer(torch.randn(LORA_RANK, layers[module].in_features, generator=generator) * 0.05,
                                     torch.randn(layers[module].out_features, LORA_RANK, generator=generator) * 0.05)
                   for module in LORA_MODULES}
        path = folder / f"lora-{index}.safetensors"
        write_lora_file(factors, path, "diffusers")
        paths.append(path)
    return paths


# ---- the worker as a subprocess ----------------------------------------------------------------------------------

def worker_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "autolora_worker", *arguments]


def run_worker_command(*arguments: str, timeout: float) -> str:
    """Run a worker command to its end; its stdout, or CheckFailed with the end of its stderr."""
    result = subprocess.run(worker_command(*arguments), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise CheckFailed(f"`{' '.join(arguments[:2])}` exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result.stdout


def full_size_supported() -> bool:
    """Whether this checkout's `tiny-flux` can write a stand-in with FLUX.1's full-size, random-initialised
    transformer (see FULL_SIZE_OPTION)."""
    return FULL_SIZE_OPTION in run_worker_command("tiny-flux", "--help", timeout=120)


@contextmanager
def served(model_dir: Path, gates: Path, device: str, log: Path, start_timeout: float) -> Iterator[tuple[str, str]]:
    """A `serve --family flux` worker on a free port with a random token: yields (base URL, token), stops it after."""
    token = secrets.token_hex(16)
    environment = {**os.environ, "AUTOLORA_WORKER_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as stderr:
        process = subprocess.Popen(
            worker_command("serve", "--family", "flux", "--model-path", str(model_dir), "--gates", str(gates),
                           "--device", device, "--port", "0"),
            env=environment, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            port = _listening_port(process, log, start_timeout)
            yield f"http://127.0.0.1:{port}", token
        finally:
            # SIGINT is the worker's clean stop (it closes its socket and says "stopped"); kill only if it hangs.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _listening_port(process: subprocess.Popen, log: Path, timeout: float) -> int:
    """The port from the worker's `{"event": "listening"}` line; CheckFailed if it exits or is silent too long."""
    lines: queue.Queue[str] = queue.Queue()
    # readline blocks; a reader thread lets the wait have a deadline.
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        raise CheckFailed(f"the worker did not listen within {timeout:.0f} s: {_tail(log)}") from None
    if not line:
        process.wait()
        raise CheckFailed(f"the worker exited {process.returncode} before listening: {_tail(log)}")
    return int(json.loads(line)["port"])


def _tail(log: Path, characters: int = 2000) -> str:
    return log.read_text(errors="replace").strip()[-characters:]


def http_request(url: str, token: str, body: dict | None = None) -> urllib.request.Request:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}", **({"Content-Type": "application/json"} if data else {})}
    return urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")


def wait_for_health(base_url: str, token: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(http_request(f"{base_url}/health", token), timeout=10) as response:
                return json.loads(response.read())
        except OSError as error:
            if time.monotonic() > deadline:
                raise CheckFailed(f"GET /health did not answer within {timeout:.0f} s: {error}") from None
            time.sleep(0.2)


def generate(base_url: str, token: str, body: dict, timeout: float) -> list[dict]:
    """POST /generate and read its NDJSON stream to the end: every event, in order."""
    with urllib.request.urlopen(http_request(f"{base_url}/generate", token, body), timeout=timeout) as response:
        return [json.loads(line) for line in response if line.strip()]


def image_sizes(job_end: dict) -> list[list[int]]:
    """Each returned image's (width, height), read from its PNG; CheckFailed if one is not a PNG."""
    sizes = []
    for index, image in enumerate(job_end.get("images", [])):
        try:
            with Image.open(io.BytesIO(base64.b64decode(image["png_base64"]))) as png:
                if png.format != "PNG":
                    raise ValueError(f"a {png.format} image")
                sizes.append([png.width, png.height])
        except (ValueError, OSError) as error:
            raise CheckFailed(f"image {index} of job-end is not a base64 PNG: {error}") from None
    return sizes


# ---- the steps ---------------------------------------------------------------------------------------------------

class StandIn:
    """The model folder the generation's worker serves, written by `tiny-flux` in the background while the fusion
    rows and the gate import run (starting a Python with diffusers costs seconds each time)."""

    def __init__(self, folder: Path, full_size: bool):
        self.folder, self.full_size = folder, full_size
        self.config = get_family("flux").transformer if full_size else TINY_TRANSFORMER
        self.log = folder.with_name("tiny-flux.log")
        arguments = ("tiny-flux", "--out", str(folder), *((FULL_SIZE_OPTION,) if full_size else ()))
        with self.log.open("w") as log:
            self.process = subprocess.Popen(worker_command(*arguments), stdout=subprocess.DEVNULL, stderr=log)

    def wait(self, timeout: float) -> Path:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise CheckFailed(f"tiny-flux did not finish within {timeout:.0f} s") from None
        if self.process.returncode != 0:
            raise CheckFailed(f"tiny-flux exited {self.process.returncode}: {_tail(self.log)}")
        return self.folder

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclasses.dataclass
class Run:
    mode_name: str
    mode: Mode
    workdir: Path
    stand_in: StandIn | None = None  # started by the environment step
    converted_gates: Path | None = None  # what `gates import` wrote, once it has


def environment_step(run: Run) -> Iterator[dict]:
    """What the check runs on; starts writing the model folder the generation will serve."""
    device = torch.device(run.mode.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    full_size = run.mode_name == "full" and full_size_supported()
    run.stand_in = StandIn(run.workdir / "model", full_size)
    yield {"step": "environment", "ok": True, "mode": run.mode_name, "device": name, "python": sys.version.split()[0],
           "torch": torch.__version__, "diffusers": version("diffusers"),
           "serves": "flux-full-size (random init)" if full_size else "tiny-flux"}


def fusion_step(run: Run) -> Iterator[dict]:
    """One line per strategy and k: ms per denoising step of the whole transformer and the ratio to `none`."""
    mode, device = run.mode, torch.device(run.mode.device)
    started = time.perf_counter()
    config, model = (None, "flux-full") if run.mode_name == "full" else (TINY_TRANSFORMER, "tiny-flux")
    timed = {name: STRATEGIES[name] for name in CHECKED_STRATEGIES}
    # `bench` times every registered strategy and takes no list of them. On FLUX.1 that cannot fit an H200: klora's
    # build holds every adapted layer's dense ΔW in fp32 at once (~47 GB per LoRA over the block linears), so k = 2
    # needs ~95 GB beside the 24 GB model and dare's 24 GB weight copy. The check times its own rows only; bench adds
    # `gated` with the compiled gate (bench.COMPILED_ROW), compiled in the untimed warm-up round.
    with mock.patch.object(bench, "STRATEGIES", timed):
        rows = bench.full_flux_rows(device, mode.rank, mode.repeats, config=config, size=mode.size,
                                    text_tokens=mode.text_tokens)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # hand the 24 GB model back before a worker loads its own
    for row in rows:
        gate = {"gated": {"gate": "eager"}, bench.COMPILED_ROW: {"gate": "compiled"}}.get(row["strategy"], {})
        yield {"step": "fusion", "row": row["strategy"], **gate, "model": model, "k": row["k"], "ms": row["ms"],
               "ratio_vs_none": row["ratio_vs_none"], "size": mode.size}
    yield {"step": "fusion", "ok": True, "seconds": round(time.perf_counter() - started, 1)}


def gates_import_step(run: Run) -> Iterator[dict]:
    """`gates import --from diffsynth` on a synthetic file with the exact published layout for FLUX.1."""
    started = time.perf_counter()
    source = run.workdir / "diffsynth-gates.safetensors"
    gates = write_synthetic_diffsynth_gates(source)
    out = run.workdir / "imported-gates.safetensors"
    result = json.loads(run_worker_command("gates", "import", str(source), "--from", "diffsynth", "--out", str(out),
                                           timeout=300))
    if result["gates_converted"] != gates:
        raise CheckFailed(f"gates import converted {result['gates_converted']} gates of {gates}")
    run.converted_gates = out
    yield {"step": "gates-import", "ok": True, "source": "synthetic DiffSynth FluxLoraPatcher layout (seed 0, bf16)",
           **{key: result[key] for key in ("gates_converted", "gates_split", "pass_through_layers", "layers",
                                           "version")},
           "seconds": round(time.perf_counter() - started, 1)}


def generate_step(run: Run) -> Iterator[dict]:
    """A 4-step `gated` generation with two LoRAs through the worker's HTTP API, on the model the checkout can serve."""
    mode = run.mode
    if run.stand_in is None:
        raise CheckFailed("no model folder to serve: the environment step failed")
    line: dict = {"step": "generate"}
    if run.stand_in.full_size:
        if run.converted_gates is None:
            raise CheckFailed("no converted gate file to serve: the gates-import step failed")
        gates = run.converted_gates
        line |= {"model": "flux-full-size (random init)",
                 "gates": "converted by `gates import` from the synthetic DiffSynth file"}
    else:
        gates = run.workdir / "tiny-gates.safetensors"
        GateBank(gate_dims(meta_flux_transformer(run.stand_in.config)), seed=0, family="flux").save(
            gates, version="gpu-check-tiny")
        line |= {"model": "tiny-flux",
                 "gates": "GateBank.save for the tiny model's gate_dims (a DiffSynth layout fits only FLUX.1's widths)"}
        if run.mode_name == "full":
            line["note"] = (f"this checkout's tiny-flux has no {FULL_SIZE_OPTION}, so a worker cannot serve a "
                            "random-initialised full-size FLUX.1 (its weights are not here): generated on the tiny "
                            "stand-in")
    loras = write_loras(meta_flux_transformer(run.stand_in.config), run.workdir)
    model_dir = run.stand_in.wait(timeout=mode.model_write_s)
    body = {"prompt": PROMPT, "seeds": [0], "steps": GENERATION_STEPS, "fusion": "gated", "height": mode.size,
            "width": mode.size, "loras": [{"path": str(path), "name": path.stem} for path in loras]}

    started = time.perf_counter()
    with served(model_dir, gates, mode.device, run.workdir / "worker.log", mode.worker_start_s) as (base_url, token):
        health = wait_for_health(base_url, token, timeout=30)
        worker_start_s = time.perf_counter() - started
        asked = time.perf_counter()
        events = generate(base_url, token, body, timeout=mode.generate_s)
        seconds = time.perf_counter() - asked
    end = events[-1] if events else {}
    if end.get("type") != "job-end":
        raise CheckFailed(f"the stream ended with {json.dumps(end)[:2000]}, not job-end")
    start = next((event for event in events if event["type"] == "job-start"), {})
    progress = [event for event in events if event["type"] == "job-progress"]
    sizes = image_sizes(end)
    fused_with_gates = end.get("fusion") == "gated" and "fusion_note" not in end
    line |= {"gate_version": health.get("gate_version"), "loras": len(loras), "steps": start.get("steps"),
             "progress_events": len(progress), "images": len(sizes), "image_sizes": sizes,
             "fusion": end.get("fusion"), "fused_with_gates": fused_with_gates,
             **({"fusion_note": end["fusion_note"]} if "fusion_note" in end else {}),
             "seconds": round(seconds, 2), "sampling_s": round(end["timings"]["sampling_ms"] / 1000, 2),
             "worker_start_s": round(worker_start_s, 1)}
    problems = []
    if start.get("steps") != GENERATION_STEPS or len(progress) != GENERATION_STEPS:
        problems.append(f"asked for {GENERATION_STEPS} steps, the worker ran {start.get('steps')} and reported "
                        f"{len(progress)}")
    if sizes != [[mode.size, mode.size]] * len(body["seeds"]):
        problems.append(f"asked for {len(body['seeds'])} image(s) of {mode.size}², got {sizes}")
    if not fused_with_gates:
        problems.append("the worker did not fuse with the gates it was given")
    yield {**line, "ok": not problems, **({"error": "; ".join(problems)} if problems else {})}


# In this order: the environment step starts the model folder's write, which the generation waits for.
STEPS: dict[str, Callable[[Run], Iterator[dict]]] = {
    "environment": environment_step, "fusion": fusion_step, "gates-import": gates_import_step,
    "generate": generate_step,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu-check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny stand-in instead of FLUX.1 (CPU: < 1 min)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="default: cuda for the full check, cpu with --tiny (--tiny --device cuda: a quick GPU run)")
    parser.add_argument("--workdir", default=None,
                        help="a new or empty folder to keep the files made (model, gates, LoRAs, logs) in")
    args = parser.parse_args(argv)
    mode_name = "tiny" if args.tiny else "full"
    mode = MODES[mode_name]
    if args.device is not None:
        mode = dataclasses.replace(mode, device=args.device)
    if mode.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device is visible; run with --tiny for the CPU check", file=sys.stderr)
        return 2
    if mode_name == "full" and mode.device != "cuda":
        print("error: the full check runs FLUX.1 in bf16 on CUDA (on the CPU it would need 48 GB in fp32); "
              "use --tiny", file=sys.stderr)
        return 2

    if mode.threads is not None:
        # An explicit OMP_NUM_THREADS wins, as in the test suite; the workers started below inherit it.
        os.environ.setdefault("OMP_NUM_THREADS", str(mode.threads))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(mode_name, mode, workdir)
    failed = []
    try:
        for name, step in STEPS.items():
            try:
                for line in step(run):
                    emit(line)
                    if line.get("ok") is False:
                        failed.append(name)
            except Exception as error:  # a step that breaks is reported and the check goes on to the next
                emit({"step": name, "ok": False, "error": f"{type(error).__name__}: {error}"})
                failed.append(name)
    finally:
        if run.stand_in is not None:
            run.stand_in.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    emit({"step": "summary", "ok": not failed, "mode": mode_name, "failed": failed,
          "seconds": round(time.monotonic() - STARTED, 1)})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
