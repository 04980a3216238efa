"""TGI's error classes: each maps to an HTTP status and the `error_type` of the `{"error", "error_type"}` body."""

from __future__ import annotations


class ServingError(Exception):
    status = 500
    error_type = "incomplete_generation"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}


class ValidationError(ServingError):
    """A request TGI would refuse before queueing it (422)."""

    status = 422
    error_type = "validation"

    def __init__(self, message: str):
        super().__init__(f"Input validation error: {message}")


class RequestRefused(ServingError):
    """A request refused before it is parsed: malformed (400: HTTP framing, not UTF-8, not JSON, nested too
    deeply), too large (413), or too slow to arrive (408).

    TGI's HTTP layer (axum) answers these with the same statuses (400 for a body that is not JSON, 413 over
    `--payload-limit`); the body keeps TGI's error shape with the `validation` type, so `huggingface_hub` clients
    raise their `ValidationError` for these too.
    """

    error_type = "validation"

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class GenerationError(ServingError):
    """Generation failed inside the model or the decoder (424)."""

    status = 424
    error_type = "generation"


class OverloadedError(ServingError):
    """The waiting queue is full (429)."""

    status = 429
    error_type = "overloaded"

    def __init__(self, message: str = "Model is overloaded"):
        super().__init__(message)


class IncompleteGenerationError(ServingError):
    status = 500
    error_type = "incomplete_generation"
