"""Build the policy and judge backends a recipe asks for; the loop never names a backend class.

`feedback_backend` / `policy_backend` choose: `in_process` (transformers in this process), `endpoint` (servers
already running at `feedback_endpoint` / `policy_endpoint`) or `serve` (this process starts `rlrf-hub serve` on a
free port for the model, and stops it when the backend is closed or garbage collected).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import GenerationBackend

if TYPE_CHECKING:
    from ..config import Recipe
    from .endpoint import EndpointBackend


def policy_backend(recipe: Recipe, adapter: str | None) -> GenerationBackend:
    """The policy M_t: the base model plus the adapter of iteration t (none for M0).

    Through an endpoint, the adapter is not merged: the server samples from it by name (`adapter_id`).
    """
    m, r = recipe.model, recipe.rlrf
    if r.policy_backend == "endpoint":
        return endpoint_backend(recipe, r.policy_endpoint, m.model_name_or_path, m.model_revision, adapter)
    if r.policy_backend == "serve":
        adapters = (adapter,) if adapter else ()
        return served_backend(recipe, m.model_name_or_path, m.model_revision, adapter, adapters)
    from .transformers_backend import TransformersBackend

    return TransformersBackend.from_pretrained(
        m.model_name_or_path,
        revision=m.model_revision,
        adapter=adapter,
        batch_size=r.generation_batch_size,
    )


def judge_backend(recipe: Recipe) -> GenerationBackend:
    """The frozen feedback model."""
    r = recipe.rlrf
    if r.feedback_backend == "endpoint":
        return endpoint_backend(recipe, r.feedback_endpoint, r.feedback_model, r.feedback_revision, None)
    if r.feedback_backend == "serve":
        return served_backend(recipe, r.feedback_model, r.feedback_revision, None, (), r.feedback_batch_size)
    from .transformers_backend import TransformersBackend

    return TransformersBackend.from_pretrained(
        r.feedback_model, revision=r.feedback_revision, batch_size=r.feedback_batch_size
    )


def endpoint_backend(
    recipe: Recipe,
    urls: str | list[str],
    model_id: str,
    revision: str | None,
    adapter: str | None,
    server=None,
) -> EndpointBackend:
    """An `EndpointBackend` with the recipe's endpoint settings; `model_id`/`revision` are recorded for lineage."""
    from .endpoint import EndpointBackend
    from .retry import RetryPolicy

    r = recipe.rlrf
    return EndpointBackend(
        _urls(urls),
        model_id=model_id,
        revision=revision,
        adapter=adapter,
        dialect=r.endpoint_dialect,
        concurrency=r.endpoint_concurrency,
        timeout=r.endpoint_timeout,
        retry=RetryPolicy(max_retries=r.endpoint_max_retries),
        server=server,
    )


def served_backend(
    recipe: Recipe,
    model_id: str,
    revision: str | None,
    adapter: str | None,
    adapters: tuple[str, ...] = (),
    max_batch_size: int | None = None,
) -> EndpointBackend:
    """Start `rlrf-hub serve` for `model_id` (and `adapters`) on a free port, and an endpoint backend on it."""
    from ..serving.launch import spawn_server

    batch = max_batch_size or recipe.rlrf.generation_batch_size
    server = spawn_server(model_id, revision=revision, adapters=adapters, max_batch_size=batch)
    try:
        return endpoint_backend(recipe, server.url, model_id, revision, adapter, server=server)
    except BaseException:
        server.close()
        raise


def _urls(value: str | list[str]) -> list[str]:
    items = [value] if isinstance(value, str) else list(value or [])
    urls = [url.strip() for item in items for url in str(item).split(",") if url.strip()]
    if not urls:
        raise ValueError("an endpoint backend needs at least one URL (feedback_endpoint / policy_endpoint)")
    return urls
