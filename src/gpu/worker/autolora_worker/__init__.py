"""AutoLoRA worker: every tensor of the bot that is not a text embedding (see shared/DESIGN.md)."""

__version__ = "0.1.0"
