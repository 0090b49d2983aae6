"""The paper's fine-grained gates (eq. 6-8), their versioned weight files, and the Global LoRA (eq. 9)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .layer import fused_layers

GATE_FILE_FORMAT = "autolora-gates"
GATE_FILE_FORMAT_VERSION = "1"
GATE_PARAMS = ("w_x", "w_l", "w_c", "b", "w_o", "ln_x.weight", "ln_x.bias", "ln_l.weight", "ln_l.bias")


def gate_math(base_out: torch.Tensor, lora_outs: torch.Tensor, w_x: torch.Tensor, w_l: torch.Tensor,
              w_c: torch.Tensor, b: torch.Tensor, w_o: torch.Tensor, ln_x_weight: torch.Tensor, ln_x_bias: torch.Tensor,
              ln_l_weight: torch.Tensor, ln_l_bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 6-8 on base_out (..., D) and lora_outs (k, ..., D): the reference the compiled gate is checked against.

    Eq. 7 regrouped as (x̂⊙w_x + b) + L̂⊙(w_l + x̂⊙w_c): the two per-token terms are computed once, not once per
    LoRA, which saves three passes over the (k, tokens, D) tensors that dominate the gate's cost."""
    x_hat = F.layer_norm(base_out, base_out.shape[-1:], ln_x_weight, ln_x_bias, eps)
    l_hat = F.layer_norm(lora_outs, lora_outs.shape[-1:], ln_l_weight, ln_l_bias, eps)
    shared = x_hat * w_x + b
    mixing = x_hat * w_c + w_l
    gates = torch.sigmoid(torch.addcmul(shared, l_hat, mixing))  # (k, ..., D)
    return base_out + w_o * (gates * lora_outs).sum(dim=0)


def gate_pointwise(base_out: torch.Tensor, lora_outs: list[torch.Tensor], means: list[torch.Tensor],
                   rstds: list[torch.Tensor], w_x: torch.Tensor, w_l: torch.Tensor, w_c: torch.Tensor, b: torch.Tensor,
                   w_o: torch.Tensor, ln_x_weight: torch.Tensor, ln_x_bias: torch.Tensor, ln_l_weight: torch.Tensor,
                   ln_l_bias: torch.Tensor, eps: float) -> torch.Tensor:
    """`gate_math` on base_out (N, D) and k LoRA outputs (N, D) whose LayerNorm statistics are already known
    (means, rstds: k × (N, 1)): everything after the statistics is elementwise, one pass over each output."""
    x_hat = F.layer_norm(base_out, base_out.shape[-1:], ln_x_weight, ln_x_bias, eps)
    shared = x_hat * w_x + b
    mixing = x_hat * w_c + w_l
    total = None
    for out, mean, rstd in zip(lora_outs, means, rstds):
        l_hat = (out - mean) * rstd * ln_l_weight + ln_l_bias
        gated = torch.sigmoid(torch.addcmul(shared, l_hat, mixing)) * out
        total = gated if total is None else total + gated
    return base_out + w_o * total


def branch_stats(up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What LayerNorm needs to know of a LoRA's output l = up @ h without computing it: over the D features, the
    mean of l is h · ū and its variance hᵀ C h, with ū the mean row of `up` (r,) and C the covariance of its rows
    (r, r). Both in fp32, from the (out, r) factor once per request."""
    up = up.float()
    mean_row = up.mean(dim=0)
    centred = up - mean_row
    return mean_row, centred.T @ centred / up.shape[0]


# On the CPU the gate runs over this many tokens at a time, so the k LoRA outputs it reads are still in cache
# from the matmul that wrote them (at 4096 tokens × 3072 wide they are 150 MB, read back from memory otherwise).
CPU_TOKEN_CHUNK = 256
# Below this many values in the (k, tokens, D) stack (1 MB in fp32) the stacked reference gate is faster, compiled
# or not: at the proving ground's sizes a layer's gate costs ~0.3 ms of per-operation overhead, not memory traffic.
SMALL_STACK = 1 << 18


class _CompiledGate:
    """A gate function (`gate_math` by default) compiled once by torch.compile (inductor: a fused C++ loop on the
    CPU, a Triton kernel on CUDA), with dynamic shapes, so one compilation serves every layer width and token count
    (and one per k where it takes lists). Compiling happens on the first call; if it fails (no compiler, an
    unsupported backend), one line says so and the eager function is used from then on, never a crash."""

    def __init__(self, function=gate_math):
        self._function = function
        self._compiled = None
        self.failed: str | None = None

    def __call__(self, *args):
        if self.failed is None:
            try:
                if self._compiled is None:
                    self._compiled = torch.compile(self._function, dynamic=True)
                return self._compiled(*args)
            except Exception as error:  # inductor raises many types; the eager gate computes the same
                self.failed = " ".join(str(error).split())[:200] or type(error).__name__
                print(f"[gates] compiling the gate failed ({self.failed}); using the eager gate", file=sys.stderr,
                      flush=True)
        return self._function(*args)


COMPILED_GATE = _CompiledGate()
COMPILED_POINTWISE = _CompiledGate(gate_pointwise)


class Gate(nn.Module):
    """One gate per LoRA-carrying linear, shared by every LoRA at that layer (so it generalises to new LoRAs).

    G = σ(x̂⊙w_x + L̂⊙w_l + x̂⊙L̂⊙w_c + b),  x' = x + Σᵢ w_o⊙gᵢ⊙lᵢ   with x̂ = LN(x), L̂ = LN(L).
    Untrained gates start as the authors' training code (DiffSynth-Studio LoraMerger) does: the three gate vectors
    and the bias drawn from N(0, 1), w_o = 1, LayerNorms affine at identity. `compiled` runs the gate as one fused
    pass (COMPILED_GATE) instead of ~10 eager passes over the (k, tokens, D) tensors; inference only.
    """

    def __init__(self, dim: int, generator: torch.Generator | None = None):
        super().__init__()
        self.w_x = nn.Parameter(torch.randn(dim, generator=generator))
        self.w_l = nn.Parameter(torch.randn(dim, generator=generator))
        self.w_c = nn.Parameter(torch.randn(dim, generator=generator))
        self.b = nn.Parameter(torch.randn(dim, generator=generator))
        self.w_o = nn.Parameter(torch.ones(dim))
        self.ln_x = nn.LayerNorm(dim)
        self.ln_l = nn.LayerNorm(dim)
        self.compiled = False

    def forward(self, base_out: torch.Tensor, lora_outs: torch.Tensor) -> torch.Tensor:
        # base_out (..., D); lora_outs (k, ..., D) -> fused (..., D)
        if self.compiled and not torch.is_grad_enabled():
            return COMPILED_GATE(base_out, lora_outs, *self._vectors(), self.ln_x.eps)
        return gate_math(base_out, lora_outs, self.w_x, self.w_l, self.w_c, self.b, self.w_o, self.ln_x.weight,
                         self.ln_x.bias, self.ln_l.weight, self.ln_l.bias, self.ln_x.eps)

    def _vectors(self) -> tuple[torch.Tensor, ...]:
        """The gate's nine vectors for inference, as plain tensors: torch.compile specialises on a parameter's shape
        (one compilation per layer width, past its limit of 8 silently eager), on a tensor's it need not."""
        return tuple(p.detach() for p in (self.w_x, self.w_l, self.w_c, self.b, self.w_o, self.ln_x.weight,
                                          self.ln_x.bias, self.ln_l.weight, self.ln_l.bias))

    def low_rank(self, base_out: torch.Tensor, hidden: list[torch.Tensor], ups: list[torch.Tensor],
                 stats: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The same as `forward(base_out, stack([h @ up.T for h, up in zip(hidden, ups)]))`, for inference, from
        each LoRA's rank-r activations hidden (N, rᵢ) and up factor (D, rᵢ) with its `branch_stats`: LayerNorm's
        statistics of each output come from the r-dim activations, and on the CPU the outputs are made and gated
        CPU_TOKEN_CHUNK tokens at a time, so none of the (k, N, D) stack is ever written to memory. base_out (N, D)."""
        tokens, width = base_out.shape
        if len(ups) * tokens * width <= SMALL_STACK:  # per-operation costs dominate: the reference's few ops win
            return gate_math(base_out, torch.stack([F.linear(h, up) for h, up in zip(hidden, ups)]), *self._vectors(),
                             self.ln_x.eps)
        eps = self.ln_l.eps
        means, rstds = [], []
        for h, (mean_row, cov) in zip(hidden, stats):
            h = h.float()
            means.append((h @ mean_row).unsqueeze(-1))
            variance = ((h @ cov) * h).sum(dim=-1).clamp_min(0)
            rstds.append(torch.rsqrt(variance + eps).unsqueeze(-1))
        params = (*self._vectors(), self.ln_x.eps)
        pointwise = COMPILED_POINTWISE if self.compiled else gate_pointwise
        chunk = CPU_TOKEN_CHUNK if base_out.device.type == "cpu" else max(tokens, 1)
        if tokens <= chunk:
            return pointwise(base_out, [F.linear(h, up) for h, up in zip(hidden, ups)], means, rstds, *params)
        fused = torch.empty_like(base_out)
        for start in range(0, tokens, chunk):
            rows = slice(start, start + chunk)
            fused[rows] = pointwise(base_out[rows], [F.linear(h[rows], up) for h, up in zip(hidden, ups)],
                                    [mean[rows] for mean in means], [rstd[rows] for rstd in rstds], *params)
        return fused


@dataclass(frozen=True)
class GateInfo:
    version: str
    family: str
    global_rank: int


class GateBank(nn.Module):
    """All gates of one model, keyed by the module name of the linear they sit on."""

    def __init__(self, dims: dict[str, int], seed: int = 0, version: str = "untrained", family: str = "",
                 global_rank: int = 4):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self._keys = {name: name.replace(".", "__") for name in dims}  # ModuleDict keys may not contain dots
        self.gates = nn.ModuleDict({self._keys[name]: Gate(dim, generator) for name, dim in sorted(dims.items())})
        self.info = GateInfo(version=version, family=family, global_rank=global_rank)

    def set_compiled(self, compiled: bool) -> "GateBank":
        """Run every gate compiled (one fused pass; see COMPILED_GATE) or eagerly. Returns the bank."""
        for gate in self.gates.values():
            gate.compiled = compiled
        return self

    def __contains__(self, module_name: str) -> bool:
        return module_name in self._keys

    def gate(self, module_name: str) -> Gate:
        return self.gates[self._keys[module_name]]

    def module_names(self) -> list[str]:
        return sorted(self._keys)

    def save(self, path: str | Path, version: str) -> None:
        tensors = {
            f"{name}.{param}": tensor.detach().float().contiguous().cpu()
            for name in self._keys
            for param, tensor in self.gate(name).state_dict().items()
        }
        metadata = {
            "format": GATE_FILE_FORMAT, "format_version": GATE_FILE_FORMAT_VERSION, "version": version,
            "family": self.info.family, "global_rank": str(self.info.global_rank),
        }
        save_file(tensors, str(path), metadata=metadata)
        self.info = GateInfo(version=version, family=self.info.family, global_rank=self.info.global_rank)

    @classmethod
    def load(cls, path: str | Path, dims: dict[str, int], family: str) -> "GateBank":
        """Load a gate file for a model whose wrapped linears have output widths `dims`.

        The file must be ours, for this family, and cover exactly these layers with these widths; anything else
        is an error naming what differs (a gate file for another model would silently produce noise).
        """
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as error:  # safetensors raises several types; one clear line is what matters
            raise ValueError(f"cannot read gate file {path}: {error}") from None
        if metadata.get("format") != GATE_FILE_FORMAT:
            raise ValueError(f"{path} is not an AutoLoRA gate file (metadata format={metadata.get('format')!r})")
        if metadata.get("format_version") != GATE_FILE_FORMAT_VERSION:
            raise ValueError(f"{path}: gate file format version {metadata.get('format_version')!r} is not supported "
                             f"(this worker reads version {GATE_FILE_FORMAT_VERSION})")
        if metadata.get("family") and metadata["family"] != family:
            raise ValueError(f"{path} holds gates for family {metadata['family']!r}, the loaded model is {family!r}")
        in_file = {key.rsplit(".", 2)[0] if key.endswith((".weight", ".bias")) else key.rsplit(".", 1)[0]
                   for key in tensors}
        missing, extra = sorted(set(dims) - in_file), sorted(in_file - set(dims))
        if missing or extra:
            raise ValueError(f"{path} does not match the model: {len(missing)} layers without gates "
                             f"(e.g. {missing[:3]}), {len(extra)} unknown layers (e.g. {extra[:3]})")
        bank = cls(dims, version=metadata.get("version", path.stem), family=family,
                   global_rank=int(metadata.get("global_rank", 4)))
        for name in dims:
            state = {param: tensors[f"{name}.{param}"] for param in GATE_PARAMS}
            for param, tensor in state.items():
                if tensor.shape != (dims[name],):
                    raise ValueError(f"{path}: gate {name}.{param} has shape {tuple(tensor.shape)}, "
                                     f"the layer is {dims[name]} wide")
            bank.gate(name).load_state_dict(state)
        return bank


def gate_dims(model: nn.Module) -> dict[str, int]:
    """The width of every wrapped linear of a model: the shape of the gate bank it needs."""
    return {name: layer.out_features for name, layer in fused_layers(model).items()}


def global_lora(downs: list[torch.Tensor], ups: list[torch.Tensor], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9: the best rank-`rank` approximation of Σᵢ upᵢ @ downᵢ, as (down (r, in), up (out, r)).

    The paper uses torch's randomized SVD on the dense sum. We compute the same truncated SVD exactly from the
    factors: with Σ BᵢAᵢ = B·A (B = [B₁…Bₖ], A = [A₁;…;Aₖ]) and thin QRs B = Q_b R_b, Aᵀ = Q_a R_a, the sum is
    Q_b (R_b R_aᵀ) Q_aᵀ, so only an R×R SVD is needed (R = Σ ranks). It never forms the out×in matrix, costs
    O((out+in)·R²) instead of O(out·in·R), and is deterministic, so the same seed gives the same image.
    """
    if not downs:
        raise ValueError("global LoRA needs at least one LoRA")
    dtype = downs[0].dtype
    stacked_up = torch.cat([u.float() for u in ups], dim=1)  # (out, R)
    stacked_down = torch.cat([d.float() for d in downs], dim=0)  # (R, in)
    q_up, r_up = torch.linalg.qr(stacked_up)  # (out, m), (m, R)
    q_down, r_down = torch.linalg.qr(stacked_down.T)  # (in, n), (n, R)
    u, s, vh = torch.linalg.svd(r_up @ r_down.T)  # core (m, n)
    keep = min(rank, s.shape[0])
    up = (q_up @ u[:, :keep]) * s[:keep]  # (out, r)
    down = vh[:keep] @ q_down.T  # (r, in)
    return down.to(dtype), up.to(dtype)

