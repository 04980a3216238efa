"""An endpoint backend built from plain endpoint settings (which backend a stage gets is decided above, in
`rlrf_hub.stages.backends`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .endpoint import EndpointBackend


@dataclass(frozen=True)
class EndpointSettings:
    """The recipe's `endpoint_*` keys."""

    dialect: str = "auto"
    concurrency: int = 8
    timeout: float = 120.0
    max_retries: int = 5


def endpoint_backend(
    settings: EndpointSettings,
    urls: str | list[str],
    model_id: str,
    revision: str | None,
    adapter: str | None,
    server=None,
) -> EndpointBackend:
    """An `EndpointBackend` with the recipe's endpoint settings; `model_id`/`revision` are recorded for lineage."""
    from .endpoint import EndpointBackend
    from .retry import RetryPolicy

    return EndpointBackend(
        _urls(urls),
        model_id=model_id,
        revision=revision,
        adapter=adapter,
        dialect=settings.dialect,
        concurrency=settings.concurrency,
        timeout=settings.timeout,
        retry=RetryPolicy(max_retries=settings.max_retries),
        server=server,
    )


def _urls(value: str | list[str]) -> list[str]:
    items = [value] if isinstance(value, str) else list(value or [])
    urls = [url.strip() for item in items for url in str(item).split(",") if url.strip()]
    if not urls:
        raise ValueError("an endpoint backend needs at least one URL (feedback_endpoint / policy_endpoint)")
    return urls
