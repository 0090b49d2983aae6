"""The worker's side of the host contract: one source for fusion names and request limits, held to them.

That the host's side (src/gpu/protocol.ts) agrees is checked from the host's tests (test/limits.test.ts).
"""

from __future__ import annotations

import pytest

from autolora_worker.errors import InvalidRequestError
from autolora_worker.fusion import STRATEGIES
from autolora_worker.protocol import (
    FUSIONS, MAX_LORAS_PER_JOB, MAX_PROMPT_CHARS, MAX_SEEDS_PER_JOB, MAX_SIZE, MAX_STEPS, MIN_SIZE, GenerateRequest, parse,
)


def test_the_fusion_names_offered_are_the_strategies_there_are():
    assert tuple(STRATEGIES) == FUSIONS


def test_a_request_at_every_limit_is_taken():
    request = parse(GenerateRequest, {
        "prompt": "a" * MAX_PROMPT_CHARS, "seeds": list(range(MAX_SEEDS_PER_JOB)), "steps": MAX_STEPS,
        "width": MAX_SIZE, "height": MIN_SIZE, "loras": [{"path": f"{n}.safetensors"} for n in range(MAX_LORAS_PER_JOB)],
        "fusion": FUSIONS[-1],
    })
    assert len(request.seeds) == MAX_SEEDS_PER_JOB


@pytest.mark.parametrize("field, value", [
    ("prompt", "a" * (MAX_PROMPT_CHARS + 1)),
    ("seeds", list(range(MAX_SEEDS_PER_JOB + 1))),
    ("steps", MAX_STEPS + 1),
    ("width", MAX_SIZE + 1),
    ("height", MIN_SIZE - 1),
    ("loras", [{"path": f"{n}.safetensors"} for n in range(MAX_LORAS_PER_JOB + 1)]),
    ("fusion", "magic"),
])
def test_a_request_past_a_limit_is_refused_naming_the_field(field, value):
    with pytest.raises(InvalidRequestError, match=f"field '{field}'"):
        parse(GenerateRequest, {"prompt": "a cat", field: value})
