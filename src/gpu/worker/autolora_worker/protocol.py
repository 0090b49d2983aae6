"""The worker's side of the host contract: request bodies (validated, field-named errors) and event shapes.

The host's mirror is src/gpu/protocol.ts; events are NDJSON lines `job-start`, `job-progress`, then exactly one
of `job-end` or `job-error`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidRequestError

# The host is JavaScript: integers above 2**53 - 1 lose precision there, and a seed must round-trip exactly.
MAX_SEED = 2**53 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not silently ignored


class LoraRef(Strict):
    path: str = Field(min_length=1, description="LoRA .safetensors file readable by the worker")
    scale: float = Field(1.0, ge=-4.0, le=4.0, description="strength multiplier on top of the file's alpha/rank")
    name: str | None = Field(None, max_length=200)


class GenerateRequest(Strict):
    job_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=100)
    prompt: str = Field(min_length=1, max_length=4000)
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1, max_length=8)
    steps: int | None = Field(None, ge=1, le=200)
    guidance: float | None = Field(None, ge=0.0, le=30.0)
    height: int | None = Field(None, ge=16, le=2048)
    width: int | None = Field(None, ge=16, le=2048)
    loras: list[LoraRef] = Field(default_factory=list, max_length=8)
    fusion: Literal["none", "direct", "dare", "klora", "gated"] = "gated"
    global_lora: bool = True
    global_rank: int = Field(4, ge=1, le=64)
    dare_density: float = Field(0.2, gt=0.0, le=1.0)
    # Send a low-res preview every N steps (0: never). Previews exist where decoding is cheap (proving ground).
    preview_every: int = Field(0, ge=0, le=200)
    preview_size: int = Field(64, ge=16, le=256)


class InspectRequest(Strict):
    path: str = Field(min_length=1)


class CancelRequest(Strict):
    job_id: str = Field(min_length=1, max_length=100)


def parse(model: type[Strict], body: object):
    """Validate a JSON body; the error names the first bad field and says what is wrong with it."""
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidRequestError(f"field '{field}': {first['msg']}") from None
