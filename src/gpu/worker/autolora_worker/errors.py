"""Typed errors with stable codes, so the service and the host never match on message text."""


class WorkerError(Exception):
    """Base class: `code` is stable across releases, the message is for the person reading it."""

    code = "worker-error"


class InvalidLoraFileError(WorkerError):
    """A LoRA file that cannot be read: not safetensors, malformed, or not a LoRA of a known family."""

    code = "invalid-lora-file"


class IncompatibleLoraError(WorkerError):
    """A readable LoRA whose layers or shapes do not fit the loaded model."""

    code = "incompatible-lora"


class InvalidRequestError(WorkerError):
    """A request field with a bad value; the message names the field."""

    code = "invalid-request"


class JobCancelledError(WorkerError):
    code = "job-cancelled"


class ModelLoadError(WorkerError):
    code = "model-load-failed"


class NoEvaluatorError(WorkerError):
    """/judge on a worker that has no image evaluator (only proving-ground workers have one)."""

    code = "no-evaluator"


def file_error(path: str, error: Exception) -> dict:
    """Why a LoRA file cannot be used, as an error body's code and message."""
    if isinstance(error, WorkerError):
        return {"code": error.code, "message": str(error)}
    reason = error.strerror if isinstance(error, OSError) and error.strerror else error
    return {"code": InvalidLoraFileError.code, "message": f"cannot read {path}: {reason}"}
