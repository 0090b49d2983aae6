"""One loaded model serving generation jobs: LoRAs from the cache, fusion per request, events out.

Transport-free (the HTTP service and the benchmark both drive it), and one job at a time on the model: a
second job waits its turn, and can be cancelled while it waits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .cache import LoraCache
from .encoder import LoraEncoder, embed_prepared, family_layer_table, load_encoder, prepare_lora
from .errors import (IncompatibleLoraError, InvalidRequestError, JobCancelledError, ModelLoadError, NoEvaluatorError,
                     WorkerError, file_error)
from .fusion import FusionOptions, FusionSession, GateBank, gate_dims
from .lora.canonical import CanonicalLora
from .lora.files import DEFAULT_MAX_LORA_BYTES
from .lora.formats import inspect_lora_file, read_lora_file
from .lora_fetch import LoraFetcher, LoraFetchError
from .models import Backbone
from .protocol import MAX_SIZE, GenerateRequest, LoraRef
from .sampling import SampleRequest, sample

Emit = Callable[[dict], None]


def png_base64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# /embed holds at most this many bytes of LoRA files prepared for the encoder at once (as float32, twice that).
EMBED_GROUP_BYTES = 256 << 20


def mask_seed(loras: list[CanonicalLora]) -> int:
    """DARE's drop masks are drawn from the LoRAs fused (their contents, in order), not from the request's seeds:
    a seed then draws the same image alone or anywhere in any grid, as README's "What a seed promises" says."""
    digest = hashlib.sha256("".join(lora.sha256 for lora in loras).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _decode_png(data: str, field: str, size: int) -> np.ndarray:
    """One base64 PNG as (size, size, 3) uint8; InvalidRequestError naming the field when it is anything else.
    A square image a whole number of times larger (the chats' nearest-neighbour enlargements) is averaged down
    block by block, which gives back the worker's own pixels exactly."""
    try:
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            if image.format != "PNG":
                raise ValueError(f"a {image.format} image")
            # checked before decoding: a small file may declare a huge image
            factor = image.width // size
            if image.width != image.height or image.width % size or not 1 <= factor <= MAX_SIZE // size:
                raise InvalidRequestError(f"field '{field}': the evaluator judges {size}x{size} images (or square "
                                          f"whole multiples up to {MAX_SIZE}), got {image.width}x{image.height}")
            pixels = np.asarray(image.convert("RGB"))
    except (binascii.Error, ValueError, OSError) as error:
        raise InvalidRequestError(f"field '{field}': not a base64 PNG ({error})") from None
    if factor == 1:
        return pixels
    blocks = pixels.reshape(size, factor, size, factor, 3).astype(np.float32).mean(axis=(1, 3))
    return np.round(blocks).astype(np.uint8)


class Engine:
    def __init__(self, backbone: Backbone, gates_path: str | Path | None = None, cache_bytes: int = 2 << 30,
                 encoder_path: str | Path | None = None, max_lora_bytes: int = DEFAULT_MAX_LORA_BYTES,
                 evaluator_path: str | Path | None = None, compile_gates: bool = False,
                 fetcher: LoraFetcher | None = None):
        self.backbone = backbone
        # Where LoRAs named by hash come from on a worker that cannot read the host's pool (serve --pool-url).
        self.fetcher = fetcher
        # Gates as one fused pass (torch.compile; the eager gate is the fallback): compiled on the first gated job.
        self.compile_gates = compile_gates
        # The proving ground's image judge (/judge), loaded on first use; None on a worker that has none.
        self._evaluator_path = Path(evaluator_path) if evaluator_path is not None else None
        self._evaluator = None
        self._evaluator_lock = threading.Lock()
        self.max_lora_bytes = max_lora_bytes  # no LoRA file over this is read, whichever route names it
        self._encoder_path = Path(encoder_path) if encoder_path is not None else None
        self._encoder = None
        self._encoder_lock = threading.Lock()
        dims = gate_dims(backbone.transformer)
        # Without a trained gate file, `gated` requests are fused directly: untrained gates scramble the image.
        self.gates_trained = gates_path is not None
        if gates_path is None:
            self.gates = GateBank(dims, seed=0, version="untrained", family=backbone.spec.name)
        else:
            self.gates = GateBank.load(gates_path, dims, backbone.spec.name)
        self.gates.to(backbone.device, backbone.dtype).requires_grad_(False).set_compiled(compile_gates)
        self.cache = LoraCache(cache_bytes, self._read_lora)
        self._model_lock = threading.Lock()

    def _read_lora(self, path: str) -> CanonicalLora:
        return self._read_checked(path).to(self.backbone.device, self.backbone.dtype)

    def _read_checked(self, path: str) -> CanonicalLora:
        """A LoRA file as read, refused if it is for another family than this worker runs."""
        lora = read_lora_file(path, self.max_lora_bytes)
        if lora.family is not None and lora.family != self.backbone.spec.name:
            raise IncompatibleLoraError(f"{Path(path).name} is a LoRA for {lora.family}, "
                                        f"this worker runs {self.backbone.spec.name}")
        return lora

    def _lora(self, ref: LoraRef) -> CanonicalLora:
        """A job's LoRA on the device: fetched by hash where this worker has pools, else read from its path."""
        if ref.sha256 is not None and self.fetcher is not None:
            self.fetcher.hold(ref.sha256)  # not evicted by another job's fetch before it is read
            try:
                lora = self.cache.get(self.fetcher.path_for(ref.sha256))
            finally:
                self.fetcher.release(ref.sha256)
        elif ref.path is not None:
            lora = self.cache.get(ref.path)
        else:
            raise LoraFetchError(f"LoRA {ref.sha256[:12]} is named by hash only and this worker has no pool to "
                                 "fetch it from (serve --pool-url)")
        if ref.sha256 is not None and lora.sha256 != ref.sha256:
            raise InvalidRequestError(f"{Path(ref.path or '').name or 'the LoRA file'} has sha256 {lora.sha256[:12]}, "
                                      f"not {ref.sha256[:12]} as the job says")
        return lora

    def health(self) -> dict:
        return {
            "status": "ok",
            "family": self.backbone.spec.name,
            "device": str(self.backbone.device),
            "model_version": self.backbone.version,
            "gate_version": self.gates.info.version,
            "encoder_version": self._encoder_version(),
            "judge": self._evaluator_path is not None,
            "cached_loras": self.cache.describe(),
            "busy": self._model_lock.locked(),
        }

    def inspect(self, path: str) -> dict:
        return inspect_lora_file(path, self.max_lora_bytes)

    def _encoder_version(self) -> str | None:
        """The LoRA encoder's version, from its encoder.json (the encoder itself loads on first /embed)."""
        if self._encoder_path is None:
            return None
        try:
            import json

            return json.loads((self._encoder_path / "encoder.json").read_text()).get("version")
        except (OSError, ValueError):
            return None

    def reload_encoder(self, path: str) -> dict:
        """Embed with the encoder in folder `path` from now on; it is loaded and checked against this family's layer
        table first (see `_load_encoder`), so a folder that does not fit changes nothing."""
        encoder = self._load_encoder(path)
        with self._encoder_lock:
            previous = self._encoder_version()
            self._encoder_path, self._encoder = Path(path), encoder
        return {"encoder_version": encoder.version, "previous": previous}

    def _load_encoder(self, path: str | Path) -> LoraEncoder:
        """An encoder that reads this family's LoRAs: FLUX.1's layer table on any flux worker (a stand-in too, since
        community LoRAs are FLUX.1-shaped), the loaded model's own on the proving ground."""
        return load_encoder(path, table=family_layer_table(self.backbone.spec.name, self.backbone.transformer))

    def reload_gates(self, path: str) -> dict:
        """Serve these gates from the next job on: loaded and checked first, then swapped in between jobs (a job
        running now finishes with the gates it started with). A file that does not fit changes nothing."""
        gates = GateBank.load(path, gate_dims(self.backbone.transformer), self.backbone.spec.name)
        gates.to(self.backbone.device, self.backbone.dtype).requires_grad_(False).set_compiled(self.compile_gates)
        with self._model_lock:
            previous, self.gates, self.gates_trained = self.gates.info.version, gates, True
        return {"gate_version": gates.info.version, "previous": previous}

    def embed(self, path: str) -> dict:
        """What ingest needs of a LoRA file: what `inspect` says, plus its LoRA-encoder embedding (a unit vector
        in the text encoder's space, for retrieval). The encoder loads on first use. A worker without an encoder
        (a family none has been trained for yet) still reads and checks the file: `embedding` is then None and
        `no_embedding` says why, so the host can index the LoRA by its text until an encoder exists."""
        answer = self.embed_many([path])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def embed_refs(self, refs: list[LoraRef]) -> dict:
        """`embed_many` of files named by hash (fetched from this worker's pools) or by path, as the queue asks:
        {"results": [answer or {"error": {...}}]} in order; a file that cannot be fetched fails alone."""
        paths: list[str | None] = []
        errors: dict[int, dict] = {}
        held = [ref.sha256 for ref in refs if ref.sha256 is not None and self.fetcher is not None]
        for sha256 in held:
            self.fetcher.hold(sha256)
        try:
            for number, ref in enumerate(refs):
                try:
                    if ref.sha256 is not None and self.fetcher is not None:
                        paths.append(self.fetcher.path_for(ref.sha256))
                    elif ref.path is not None:
                        paths.append(ref.path)
                    else:
                        raise LoraFetchError(f"LoRA {ref.sha256[:12]} is named by hash only and this worker has no "
                                             "pool to fetch it from (serve --pool-url)")
                except LoraFetchError as error:
                    paths.append(None)
                    errors[number] = file_error(ref.sha256 or "", error)
            readable = [path for path in paths if path is not None]
            answers = iter(self.embed_many(readable) if readable else [])
            results = []
            for number, (ref, path) in enumerate(zip(refs, paths)):
                if path is None:
                    results.append({"error": errors[number]})
                    continue
                answer = next(answers)
                if isinstance(answer, dict) and ref.sha256 is not None and answer["sha256"] != ref.sha256:
                    answer = InvalidRequestError(f"{Path(path).name} has sha256 {answer['sha256'][:12]}, not "
                                                 f"{ref.sha256[:12]} as the job says")
                results.append(answer if isinstance(answer, dict) else {"error": file_error(path, answer)})
            return {"results": results}
        finally:
            for sha256 in held:
                self.fetcher.release(sha256)

    def embed_many(self, paths: list[str]) -> list[dict | WorkerError | OSError]:
        """`embed` for many files in one call, in order; a file that cannot be used gets its error in its place and
        fails alone. Each file is read once (bytes, hash and tensors) and reduced to what the encoder reads;
        groups of up to EMBED_GROUP_BYTES of files go through the encoder together, so a batch of large FLUX
        LoRAs is never in memory at once."""
        answers: list[dict | WorkerError | OSError | None] = [None] * len(paths)
        with self._encoder_lock:
            if self._encoder is None and self._encoder_path is not None:
                self._encoder = self._load_encoder(self._encoder_path)
            encoder = self._encoder
            group: list[tuple[int, dict, object]] = []
            held = 0
            for number, path in enumerate(paths):
                try:
                    lora = self._read_checked(path)
                    about = {"sha256": lora.sha256, "format": lora.format, "family": lora.family,
                             "modules": len(lora.layers), "ranks": sorted(set(lora.ranks.values())),
                             "unknown_keys": lora.unknown_keys}
                    if encoder is None:
                        answers[number] = {**about, "embedding": None, "dim": None, "encoder_version": None,
                                           "no_embedding": f"this worker has no LoRA encoder for {self.backbone.spec.name} "
                                           "(bootstrap one from the pool with `autolora retrain --encoder`; a "
                                           "worker started by hand takes --encoder FOLDER)"}
                        continue
                    group.append((number, about, prepare_lora(encoder, lora)))
                    held += lora.nbytes()
                except (WorkerError, OSError) as error:
                    answers[number] = error
                    continue
                if held >= EMBED_GROUP_BYTES:
                    self._embed_group(encoder, group, answers)
                    group, held = [], 0
            self._embed_group(encoder, group, answers)
        return answers  # type: ignore[return-value]

    @staticmethod
    def _embed_group(encoder: LoraEncoder | None, group: list, answers: list) -> None:
        if not group:
            return
        with torch.no_grad():
            vectors = embed_prepared(encoder, [prepared for _, _, prepared in group]).float().cpu()
        for (number, about, _), vector in zip(group, vectors):
            answers[number] = {**about, "embedding": vector.tolist(), "dim": int(vector.numel()),
                               "encoder_version": encoder.version}

    def judge(self, images: list[str]) -> dict:
        """The evaluator's shape, style and colour for each base64 PNG, in order: how the benchmarks score images
        that went through the product (proving ground only; no other family has a judge)."""
        if self._evaluator_path is None:
            raise NoEvaluatorError("this worker has no image evaluator: /judge scores proving-ground images, "
                                   "so start a proving-ground worker with --evaluator FOLDER (the bundle's evaluator/)")
        with self._evaluator_lock:
            if self._evaluator is None:
                from .world.evaluator import load_evaluator

                self._evaluator = load_evaluator(self._evaluator_path)
        size = self._evaluator.image_size
        pixels = np.stack([_decode_png(image, f"images.{index}", size) for index, image in enumerate(images)])
        predicted = self._evaluator.predict(pixels)
        return {"labels": [dict(zip(predicted, values)) for values in zip(*predicted.values())],
                "evaluator": str(self._evaluator_path.name)}

    def generate(self, request: GenerateRequest, emit: Emit, cancel: threading.Event) -> None:
        """Run one job, emitting job-start, job-progress…, then job-end or job-error; never raises for a
        problem of the job itself (a bad LoRA fails this request only)."""
        started = time.perf_counter()
        spec = self.backbone.spec
        steps = request.steps or spec.default_steps
        emit({"type": "job-start", "job_id": request.job_id, "seeds": request.seeds, "steps": steps})
        try:
            loras = [self._lora(ref) for ref in request.loras]
            fusion, fusion_note = request.fusion, None
            if fusion == "gated" and not self.gates_trained:
                fusion = "direct"
                fusion_note = (f"this worker has no trained gates for {spec.name}, so the LoRAs were added directly "
                               "(untrained gates scramble the image)")
            options = FusionOptions(strategy=fusion, global_lora=request.global_lora,
                                    global_rank=request.global_rank, dare_density=request.dare_density,
                                    seed=mask_seed(loras))
            sample_request = SampleRequest(
                prompt=request.prompt, seeds=request.seeds, steps=steps,
                guidance=spec.default_guidance if request.guidance is None else request.guidance,
                height=request.height or spec.default_size, width=request.width or spec.default_size,
                true_cfg=spec.true_cfg)
            self.backbone.check_size(sample_request.height, sample_request.width)
            while not self._model_lock.acquire(timeout=0.05):
                if cancel.is_set():
                    raise JobCancelledError("cancelled while waiting for the model")
            try:
                sampling_started = time.perf_counter()
                with FusionSession(self.backbone.transformer, loras, [ref.scale for ref in request.loras],
                                   options, self.gates) as session:
                    images = sample(
                        self.backbone, sample_request,
                        on_step_start=session.set_step,
                        on_step_end=lambda step, total, x0: self._progress(emit, request, step, total, x0,
                                                                           sample_request),
                        should_cancel=cancel.is_set)
                sampling_ms = (time.perf_counter() - sampling_started) * 1000
            finally:
                self._model_lock.release()
        except WorkerError as error:
            emit({"type": "job-error", "job_id": request.job_id, "code": error.code, "message": str(error)})
            return
        except (ValueError, OSError) as error:
            emit({"type": "job-error", "job_id": request.job_id, "code": "invalid-request", "message": str(error)})
            return
        except Exception as error:  # a job must end with an event, whatever broke
            emit({"type": "job-error", "job_id": request.job_id, "code": "internal-error",
                  "message": f"{type(error).__name__}: {error}"})
            return
        emit({
            "type": "job-end",
            "job_id": request.job_id,
            "images": [{"seed": seed, "png_base64": png_base64(image), "width": image.shape[1],
                        "height": image.shape[0]} for seed, image in zip(request.seeds, images)],
            "fusion": fusion,
            **({"fusion_note": fusion_note} if fusion_note else {}),
            "loras": [{"sha256": lora.sha256, "name": ref.name or lora.name, "format": lora.format,
                       "scale": ref.scale} for lora, ref in zip(loras, request.loras)],
            "model_version": self.backbone.version,
            "gate_version": self.gates.info.version if fusion == "gated" else None,
            "timings": {"total_ms": (time.perf_counter() - started) * 1000, "sampling_ms": sampling_ms},
        })

    def _progress(self, emit: Emit, request: GenerateRequest, step: int, total: int, x0: torch.Tensor,
                  sample_request: SampleRequest) -> None:
        event = {"type": "job-progress", "job_id": request.job_id, "step": step, "total": total}
        if request.preview_every and (step % request.preview_every == 0 or step == total):
            preview = self.backbone.preview(x0[:1], sample_request.height, sample_request.width)
            if preview is not None:
                image = Image.fromarray(preview[0])
                image.thumbnail((request.preview_size, request.preview_size))
                event["preview"] = {"png_base64": png_base64(np.asarray(image)), "width": image.width,
                                    "height": image.height}
        emit(event)
