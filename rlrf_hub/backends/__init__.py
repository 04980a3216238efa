"""Generation backends: one interface, implemented in-process (transformers) and, later, over HTTP."""

from .base import Generation, GenerationBackend, GenerationRequest, SamplingParams

__all__ = ["Generation", "GenerationBackend", "GenerationRequest", "SamplingParams"]
