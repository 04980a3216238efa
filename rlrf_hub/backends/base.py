"""The interface every generation backend implements; stages only ever see this."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    do_sample: bool = True
    seed: int = 0


@dataclass
class GenerationRequest:
    """One chat prompt to complete `n` times, optionally constrained to a JSON schema."""

    messages: list[dict[str, str]]
    n: int = 1
    json_schema: dict[str, Any] | None = None


@dataclass
class Generation:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" or "length"


class GenerationBackend(Protocol):
    """Completes chat requests. `model_id`/`revision`/`adapter` say who generated, for lineage."""

    model_id: str
    revision: str | None
    adapter: str | None

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, desc: str | None = None
    ) -> list[list[Generation]]:
        """Return, for each request, its `n` generations in order."""
        ...
