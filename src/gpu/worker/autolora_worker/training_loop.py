"""The loop every trainer runs (the proving ground's base model, LoRAs and gates; the LoRA encoder): per-step
seeded randomness, AdamW with warmup + cosine, gradient clipping, atomic checkpoints from which a resumed run is
bit-identical to an uninterrupted one, and progress lines.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

Progress = Callable[[str], None]
# step, the step's randomness -> named loss terms; "loss" is the one minimised, all are recorded in the history.
StepLoss = Callable[[int, "StepRandom"], dict[str, torch.Tensor]]
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class StepRandom:
    """All randomness of one step, derived from (seed, step) alone: resuming at step n replays step n exactly."""

    data: np.random.Generator  # handed to the caller's sampler (which scenes, which captions)
    torch: torch.Generator  # CPU generator for noise, σ, caption dropout


def step_random(seed: int, step: int) -> StepRandom:
    data_sequence, torch_sequence = np.random.SeedSequence([seed, step]).spawn(2)
    torch_seed = int(torch_sequence.generate_state(1, dtype=np.uint64)[0])
    return StepRandom(np.random.default_rng(data_sequence), torch.Generator().manual_seed(torch_seed))


def learning_rate(step: int, steps: int, peak: float, warmup: int, floor: float) -> float:
    """Linear warmup over `warmup` steps, then cosine from `peak` down to `floor`·`peak` at the last step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup - 1)
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


@dataclass
class LoopSettings:
    name: str  # label of progress lines and errors: "base", "lora", "gates", "encoder"
    steps: int
    lr: float
    seed: int
    warmup: int
    weight_decay: float = 0.0
    lr_floor: float = 0.1  # cosine ends at this fraction of the peak, not at zero: the last steps still learn
    clip: float = 1.0  # global gradient-norm clip; 0 turns it off
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 200
    resume: bool = False
    progress: Progress | None = print
    log_every: int = 50
    # What a checkpoint must have been written with to be resumed (batch, modules, …): a checkpoint of another
    # run would otherwise be continued silently into a model nobody asked for.
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.lr <= 0 or self.warmup < 0 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError(f"{self.name}: bad training settings steps={self.steps} lr={self.lr} "
                             f"warmup={self.warmup} checkpoint_every={self.checkpoint_every} "
                             f"log_every={self.log_every}")


def run_loop(params: dict[str, nn.Parameter], step_loss: StepLoss, settings: LoopSettings) -> dict[str, list[float]]:
    """Minimise `step_loss(...)["loss"]` over `params` for `settings.steps` steps; returns the per-step history
    of every loss term and the learning rate (including steps done before a resume)."""
    optimizer = torch.optim.AdamW(list(params.values()), lr=settings.lr, weight_decay=settings.weight_decay)
    path = Path(settings.checkpoint_dir) / CHECKPOINT_NAME if settings.checkpoint_dir is not None else None
    start, history = 0, {}
    if settings.resume and path is not None and path.exists():
        start, history = _load(path, params, optimizer, settings)
        _report(settings, f"resumed from {path} at step {start}/{settings.steps}")
    meter = _Meter(start)
    for step in range(start, settings.steps):
        lr = learning_rate(step, settings.steps, settings.lr, settings.warmup, settings.lr_floor)
        for group in optimizer.param_groups:
            group["lr"] = lr
        terms = step_loss(step, step_random(settings.seed, step))
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{settings.name}: loss is {loss.item()} at step {step + 1}; lower the "
                                     f"learning rate (now {lr:.2e})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params.values()), settings.clip)
        optimizer.step()
        for term, value in terms.items():
            history.setdefault(term, []).append(float(value.detach()))
        history.setdefault("lr", []).append(lr)
        done = step + 1
        if path is not None and (done % settings.checkpoint_every == 0 or done == settings.steps):
            _save(path, done, params, optimizer, history, settings)
        if done % settings.log_every == 0 or done == settings.steps:
            _report(settings, meter.line(done, settings.steps, history, settings.log_every))
    return history


def _report(settings: LoopSettings, line: str) -> None:
    if settings.progress is not None:
        settings.progress(f"[{settings.name}] {line}")


class _Meter:
    def __init__(self, start: int):
        self.start, self.started = start, time.monotonic()

    def line(self, done: int, total: int, history: dict[str, list[float]], window: int) -> str:
        rate = (done - self.start) / max(1e-9, time.monotonic() - self.started)
        terms = " ".join(f"{term} {np.mean(values[-window:]):.4f}" for term, values in history.items() if term != "lr")
        eta = (total - done) / rate if rate > 0 else float("inf")
        return f"step {done}/{total} {terms} lr {history['lr'][-1]:.2e} {rate:.2f} steps/s ETA {_duration(eta)}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s"


def _save(path: Path, step: int, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer,
          history: dict[str, list[float]], settings: LoopSettings) -> None:
    """Write to a temporary file and rename it over the old checkpoint: a crash mid-write never loses both."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "params": {name: param.detach().cpu().clone() for name, param in params.items()},
        "optimizer": optimizer.state_dict(),
        "history": history,
        "settings": _settings_record(settings),
    }
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def _load(path: Path, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer,
          settings: LoopSettings) -> tuple[int, dict[str, list[float]]]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    expected, found = _settings_record(settings), state["settings"]
    differing = {key: (found.get(key), value) for key, value in expected.items() if found.get(key) != value}
    if differing:
        details = ", ".join(f"{key}: checkpoint {old!r} vs now {new!r}" for key, (old, new) in differing.items())
        raise ValueError(f"{settings.name}: checkpoint {path} was written by a different run ({details}); "
                         f"delete it or resume with the same settings")
    if set(state["params"]) != set(params):
        raise ValueError(f"{settings.name}: checkpoint {path} holds other parameters than this run trains")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state["params"][name])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"]), state["history"]


def _settings_record(settings: LoopSettings) -> dict[str, Any]:
    """Everything that shapes the trajectory (not where it is saved or how it is reported)."""
    return {"steps": settings.steps, "lr": settings.lr, "seed": settings.seed, "warmup": settings.warmup,
            "weight_decay": settings.weight_decay, "lr_floor": settings.lr_floor, "clip": settings.clip,
            **{key: _plain(value) for key, value in settings.fingerprint.items()}}


def _plain(value: Any) -> Any:
    """Fingerprint values as the checkpoint stores them (tuples come back from torch.load as lists)."""
    return list(value) if isinstance(value, tuple) else value
