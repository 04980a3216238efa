"""Build the policy and judge backends a recipe asks for; the loop never names a backend class."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import GenerationBackend

if TYPE_CHECKING:
    from ..config import Recipe


def policy_backend(recipe: Recipe, adapter: str | None) -> GenerationBackend:
    """The policy M_t: the base model plus the adapter of iteration t (none for M0)."""
    from .transformers_backend import TransformersBackend

    m = recipe.model
    return TransformersBackend.from_pretrained(
        m.model_name_or_path,
        revision=m.model_revision,
        adapter=adapter,
        batch_size=recipe.rlrf.generation_batch_size,
    )


def judge_backend(recipe: Recipe) -> GenerationBackend:
    """The frozen feedback model."""
    from .transformers_backend import TransformersBackend

    r = recipe.rlrf
    return TransformersBackend.from_pretrained(
        r.feedback_model, revision=r.feedback_revision, batch_size=r.feedback_batch_size
    )
