"""LoRA fusion on wrapped linears: none, direct, dare, klora and gated (+ Global LoRA)."""

from .gates import Gate, GateBank, gate_dims, global_lora
from .layer import FusedLinear, fused_layers, wrap_linears
from .session import FusionSession
from .strategies import STRATEGIES, FusionOptions, get_strategy

__all__ = ["FusedLinear", "FusionOptions", "FusionSession", "Gate", "GateBank", "gate_dims", "STRATEGIES", "fused_layers",
           "get_strategy", "global_lora", "wrap_linears"]
