"""Community LoRA files: reading every FLUX format into one canonical form, and writing them back."""

from .canonical import CanonicalLora, LoraLayer

__all__ = ["CanonicalLora", "LoraLayer"]
