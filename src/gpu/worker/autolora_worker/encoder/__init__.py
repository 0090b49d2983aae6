"""The LoRA weight encoder (paper eq. 1-3): a LoRA's factors in, one unit vector in the frozen text encoder's space
out, so that cosine with a prompt's embedding ranks a pool of LoRAs (eq. 4-5).

model.py (the network, batching, embed_loras) → training.py (contrastive training) → files.py (the saved folder);
bootstrap.py trains a family's first encoder from crawled, captioned LoRAs and judges it against text-only
retrieval; cli.py is the `embed` command.
"""

from .files import CONFIG_NAME, WEIGHTS_NAME, check_layer_table, load_encoder, save_encoder
from .model import (TEXT_DIM, EncoderLayer, LoraEncoder, embed_loras, embed_prepared, family_layer_table, layer_table,
                    layer_type, prepare_lora)
from .training import contrastive_loss, draw_batch, train_encoder

__all__ = ["CONFIG_NAME", "EncoderLayer", "LoraEncoder", "TEXT_DIM", "WEIGHTS_NAME", "check_layer_table",
           "contrastive_loss", "draw_batch", "embed_loras", "embed_prepared", "family_layer_table", "layer_table", "layer_type",
           "load_encoder", "prepare_lora", "save_encoder", "train_encoder"]
