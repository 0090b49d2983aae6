"""`bench fusion`: per-step latency of every fusion strategy next to the base model, measured side by side.

Rows: the proving-ground transformer (one denoising step on a 2x2 grid's batch of 4), single FLUX-size linears
(3072→3072 and 3072→12288 over 4096 image tokens, the 1024² case), and with `--full-flux` the whole FLUX.1
transformer, random-initialised in bf16 at 1024² (a GPU job). Strategies are timed in interleaved rounds, so
a slow moment of the machine hits all of them alike; each row reports the median round.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .families import get_family
from .fusion import STRATEGIES, FusionOptions, FusionSession, GateBank, fused_layers, gate_dims, wrap_linears
from .fusion.gates import CPU_TOKEN_CHUNK, SMALL_STACK
from .fusion.layer import Branch, LayerPlan
from .lora.canonical import CanonicalLora, LoraLayer
from .models import random_flux_transformer, random_proving_ground


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def random_loras(model: nn.Module, k: int, rank: int, dtype: torch.dtype, device: torch.device,
                 only: Callable[[str], bool] = lambda name: True) -> list[CanonicalLora]:
    generator = torch.Generator().manual_seed(k)
    loras = []
    for i in range(k):
        layers = {}
        for name, layer in fused_layers(model).items():
            if only(name):
                down = torch.randn(rank, layer.in_features, generator=generator) * 0.01
                up = torch.randn(layer.out_features, rank, generator=generator) * 0.01
                layers[name] = LoraLayer(down.to(device, dtype), up.to(device, dtype), 1.0)
        loras.append(CanonicalLora(layers, name=f"bench-{i}"))
    return loras


COMPILED_ROW = "gated-compiled"
FLOOR_ROW = "gate-floor"


class _GateFloorPlan(LayerPlan):
    """What no implementation of the gate (eq. 6-8) can skip at a layer, and nothing more: every branch's output
    (the down-projections as one matmul, the up-projections as one batched matmul over ranks padded to the largest)
    and one in-place sigmoid over those k outputs, in token chunks where the gate itself works in chunks (on the
    CPU, past SMALL_STACK). No LayerNorm, product or sum; the layer returns the base output. Timed as FLOOR_ROW: what
    the gate's unavoidable part costs with PyTorch's own kernels, to read the `gated` rows against."""

    def __init__(self, branches: list[Branch]):
        rank, first = max(b.rank for b in branches), branches[0]
        self.shape = (len(branches), rank)
        self.down = first.down.new_zeros(len(branches) * rank, first.down.shape[1])
        self.ups = first.up.new_zeros(len(branches), rank, first.up.shape[0])
        for i, branch in enumerate(branches):
            self.down[i * rank:i * rank + branch.rank] = branch.down
            self.ups[i, :branch.rank] = branch.up.T

    def forward(self, base, x):
        flat = x.reshape(-1, x.shape[-1])
        tokens, stack = flat.shape[0], self.shape[0] * flat.shape[0] * self.ups.shape[-1]
        chunk = CPU_TOKEN_CHUNK if x.device.type == "cpu" and stack > SMALL_STACK else max(tokens, 1)
        for start in range(0, tokens, chunk):
            rows = flat[start:start + chunk]
            hidden = F.linear(rows, self.down).view(rows.shape[0], *self.shape).transpose(0, 1)  # (k, n, rank)
            torch.sigmoid_(torch.bmm(hidden, self.ups))  # (k, n, out)
        return base(x)


def floor_session(model: nn.Module, loras: list[CanonicalLora], weights: list[float], gates: GateBank) -> FusionSession:
    """A gated session (same branches, Global LoRA included) whose layers do only what _GateFloorPlan does."""
    session = FusionSession(model, loras, weights, FusionOptions(strategy="gated"), gates)
    session.plans = {name: _GateFloorPlan(plan.branches) for name, plan in session.plans.items()}
    return session


def time_strategies(model: nn.Module, step: Callable[[], object], loras: list[CanonicalLora], gates: GateBank,
                    device: torch.device, repeats: int, warmup: int = 1, compiled: bool = True) -> dict[str, float]:
    """Median milliseconds of `step()` under each strategy, strategies interleaved within each round; with
    `compiled`, also `gated` with the compiled gate (COMPILED_ROW; it compiles in the untimed warm-up round); and
    the gate's floor (FLOOR_ROW) when `gated` is among them."""
    weights = [1.0] * len(loras)
    sessions = {name: FusionSession(model, loras, weights, FusionOptions(strategy=name), gates) for name in STRATEGIES}
    if "gated" in sessions:
        sessions[FLOOR_ROW] = floor_session(model, loras, weights, gates)
    if compiled:
        sessions[COMPILED_ROW] = FusionSession(model, loras, weights, FusionOptions(strategy="gated"),
                                               copy.deepcopy(gates).set_compiled(True))
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    with torch.no_grad():
        for round_index in range(warmup + repeats):
            for name, session in sessions.items():
                with session:
                    _sync(device)
                    started = time.perf_counter()
                    step()
                    _sync(device)
                    if round_index >= warmup:
                        samples[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def _rows(model_name: str, k: int, timings: dict[str, float]) -> list[dict]:
    base = timings["none"]
    return [{"model": model_name, "strategy": name, "k": k, "ms": round(ms, 3), "ratio_vs_none": round(ms / base, 3)}
            for name, ms in timings.items()]


def proving_ground_rows(device: torch.device, repeats: int, rank: int) -> list[dict]:
    backbone = random_proving_ground(device, torch.float32 if device.type == "cpu" else torch.bfloat16)
    model, dtype = backbone.transformer, backbone.dtype
    gates = GateBank(gate_dims(model)).to(device, dtype)
    batch, size = 4, get_family("proving-ground").default_size
    latents = backbone.noise(list(range(batch)), size, size)
    condition = backbone.encode_prompts(["a red hexagon with diagonal stripes"]).repeat_each(batch)
    inputs = dict(hidden_states=latents, encoder_hidden_states=condition.prompt_embeds,
                  pooled_projections=condition.pooled, timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
                  img_ids=backbone.image_ids(size, size), txt_ids=condition.text_ids,
                  guidance=torch.ones(batch, device=device, dtype=dtype), return_dict=False)
    rows = []
    for k in (1, 2, 3):
        loras = random_loras(model, k, min(rank, 16), dtype, device)
        rows += _rows("proving-ground", k, time_strategies(model, lambda: model(**inputs), loras, gates, device,
                                                           repeats))
    return rows


def flux_linear_rows(device: torch.device, tokens: int, rank: int, repeats: int) -> list[dict]:
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    rows = []
    for out_features in (3072, 12288):
        holder = nn.Sequential(nn.Linear(3072, out_features)).to(device, dtype)
        wrap_linears(holder)
        gates = GateBank(gate_dims(holder)).to(device, dtype)
        x = torch.randn(1, tokens, 3072, device=device, dtype=dtype)
        for k in (1, 2, 3):
            loras = random_loras(holder, k, rank, dtype, device)
            timings = time_strategies(holder, lambda: holder(x), loras, gates, device, repeats)
            rows += _rows(f"flux-linear-3072x{out_features}", k, timings)
    return rows


def full_flux_rows(device: torch.device, rank: int, repeats: int, config: dict | None = None,
                   size: int = 1024, text_tokens: int = 512) -> list[dict]:
    """Whole FLUX.1 transformer, random weights, one step at `size`² per strategy; `config` shrinks it for tests."""
    config = config or get_family("flux").transformer
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = random_flux_transformer(config, device, dtype).eval()
    wrap_linears(model)
    gates = GateBank(gate_dims(model)).to(device, dtype)
    image_tokens = (size // 16) ** 2
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device, dtype)

    ids = torch.zeros(size // 16, size // 16, 3)
    ids[..., 1] = torch.arange(size // 16)[:, None]
    ids[..., 2] = torch.arange(size // 16)[None, :]
    inputs = dict(hidden_states=randn(1, image_tokens, config["in_channels"]),
                  encoder_hidden_states=randn(1, text_tokens, config["joint_attention_dim"]),
                  pooled_projections=randn(1, config["pooled_projection_dim"]),
                  timestep=torch.full((1,), 0.5, device=device, dtype=dtype),
                  img_ids=ids.reshape(-1, 3).to(device, dtype), txt_ids=torch.zeros(text_tokens, 3, device=device,
                                                                                       dtype=dtype),
                  guidance=torch.full((1,), 3.5, device=device, dtype=dtype), return_dict=False)
    in_blocks = lambda name: "transformer_blocks" in name  # noqa: E731 — LoRAs cover the blocks, as trained ones do
    rows = []
    for k in (1, 2, 3):
        loras = random_loras(model, k, rank, dtype, device, only=in_blocks)
        rows += _rows("flux-full", k, time_strategies(model, lambda: model(**inputs), loras, gates, device, repeats))
        del loras
    return rows


def run_fusion_bench(args) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    started = time.perf_counter()
    print("timing the proving-ground transformer…", file=sys.stderr, flush=True)
    rows = proving_ground_rows(device, args.repeats, args.rank)
    print(f"timing FLUX-size linears ({args.tokens} tokens, rank {args.rank})…", file=sys.stderr, flush=True)
    rows += flux_linear_rows(device, args.tokens, args.rank, args.repeats)
    if args.full_flux:
        print("timing the full FLUX.1 transformer at 1024²…", file=sys.stderr, flush=True)
        rows += full_flux_rows(device, args.rank, max(1, min(args.repeats, 3)))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    report = {"device": device_name, "torch": torch.__version__, "seconds": round(time.perf_counter() - started, 1),
              "rows": rows}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"device: {device_name}\n\n| model | strategy | k | ms/step | × none |\n|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['model']} | {row['strategy']} | {row['k']} | {row['ms']:.2f} | {row['ratio_vs_none']:.2f} |")
    return 0
