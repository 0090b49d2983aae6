"""The worker's side of the host contract: request bodies (validated, field-named errors) and event shapes.

The host's mirror is src/gpu/protocol.ts; events are NDJSON lines `job-start`, `job-progress`, then exactly one
of `job-end` or `job-error`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import InvalidRequestError

# What a request may ask for, written once for the worker. The host's copy is src/gpu/protocol.ts, which imports
# them everywhere it checks input; its test/limits.test.ts checks that the two agree.

# The host is JavaScript: integers above 2**53 - 1 lose precision there, and a seed must round-trip exactly.
MAX_SEED = 2**53 - 1
MAX_PROMPT_CHARS = 4000
MAX_SEEDS_PER_JOB = 8
MAX_LORAS_PER_JOB = 8
MAX_STEPS = 200
MIN_SIZE = 16
MAX_SIZE = 2048
# Images one /judge call scores (proving ground: 64² PNGs of a few KB, well inside the 1 MiB body limit).
MAX_JUDGE_IMAGES = 32
# Files one /embed call reads (paths of a few hundred bytes each; the files are read from disk, not sent).
MAX_EMBED_PATHS = 256
# The fusion strategies by name (fusion/strategies.py STRATEGIES registers one class under each).
Fusion = Literal["none", "direct", "dare", "klora", "gated"]
FUSIONS: tuple[str, ...] = get_args(Fusion)

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not silently ignored


class LoraRef(Strict):
    path: str | None = Field(None, min_length=1, description="LoRA .safetensors file readable by the worker")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="the file's sha256: a worker with pools (serve --pool-url) fetches it "
                                           "by this; the file read must have it")
    scale: float = Field(1.0, ge=-4.0, le=4.0, description="strength multiplier on top of the file's alpha/rank")
    name: str | None = Field(None, max_length=200)

    @model_validator(mode="after")
    def _named(self):
        if self.path is None and self.sha256 is None:
            raise ValueError("name each LoRA by 'path' (a file the worker can read), 'sha256', or both")
        return self


class GenerateRequest(Strict):
    job_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=100)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1, max_length=MAX_SEEDS_PER_JOB)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance: float | None = Field(None, ge=0.0, le=30.0)
    height: int | None = Field(None, ge=MIN_SIZE, le=MAX_SIZE)
    width: int | None = Field(None, ge=MIN_SIZE, le=MAX_SIZE)
    loras: list[LoraRef] = Field(default_factory=list, max_length=MAX_LORAS_PER_JOB)
    fusion: Fusion = "gated"
    global_lora: bool = True
    global_rank: int = Field(4, ge=1, le=64)
    dare_density: float = Field(0.2, gt=0.0, le=1.0)
    # Send a low-res preview every N steps (0: never). Previews exist where decoding is cheap (proving ground).
    preview_every: int = Field(0, ge=0, le=MAX_STEPS)
    preview_size: int = Field(64, ge=16, le=256)


class InspectRequest(Strict):
    path: str = Field(min_length=1)


class EmbedRequest(Strict):
    """One file (`path`: the answer is that file's) or many (`paths`: the answer is {"results": [...]}, in order)."""
    path: str | None = Field(None, min_length=1)
    paths: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1, max_length=MAX_EMBED_PATHS)

    @model_validator(mode="after")
    def _one_form(self):
        if (self.path is None) == (self.paths is None):
            raise ValueError("give either 'path' (one file) or 'paths' (a list of files)")
        return self


class EmbedJobRequest(Strict):
    """An ingest's files through the Redis queue: named by hash (a worker with pools fetches them) and by the
    host's path (read where the worker shares the host's disk). The answer is {"results": [...]}, in order."""
    loras: list[LoraRef] = Field(min_length=1, max_length=MAX_EMBED_PATHS)


class JudgeRequest(Strict):
    images: list[str] = Field(min_length=1, max_length=MAX_JUDGE_IMAGES, description="base64 PNGs")


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
