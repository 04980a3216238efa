"""Benchmarks inside `rlrf-hub run`: after the loop trains M_t, evaluate it (M0 too, with M1) and put the results
on M_t's adapter card, so the cards show the run's models side by side as the run goes.

Per-item outputs stay under `<output_dir>/eval/M<t>/`; what is already on a card is not evaluated again.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..backends import factory
from .card_results import find_evaluation, publish_evaluation
from .results import EvaluationReport
from .runner import EvaluationSettings, benchmark_sources, evaluate_policy

if TYPE_CHECKING:
    from ..backends.base import GenerationBackend
    from ..config import Recipe
    from ..publishing import Publisher


def evaluate_iteration(recipe: Recipe, publisher: Publisher, model_index: int) -> None:
    """Evaluate M_<model_index> (and M0 when it is M1) unless its card already has the results."""
    if find_evaluation(publisher, model_index) is not None:
        return
    judge = _judge(recipe)
    indices = [0, model_index] if model_index == 1 else [model_index]
    reports = [_evaluate(recipe, publisher, index, judge) for index in indices]
    publish_evaluation(publisher, model_index, reports)


def _evaluate(recipe: Recipe, publisher: Publisher, index: int, judge: GenerationBackend | None) -> EvaluationReport:
    r, m = recipe.rlrf, recipe.model
    adapter = publisher.find_adapter(index) if index else None
    policy = factory.policy_backend(recipe, str(publisher.adapter_dir(index)) if adapter else None)
    return evaluate_policy(
        policy,
        r.eval_tasks,
        judge,
        r.eval_limit,
        Path(recipe.output_dir) / "eval" / f"M{index}",
        _settings(recipe),
        model=m.model_name_or_path,
        model_revision=m.model_revision,
        adapter=adapter.location if adapter else None,
        adapter_revision=adapter.revision if adapter else None,
        iteration=index,
    )


def _settings(recipe: Recipe) -> EvaluationSettings:
    r = recipe.rlrf
    return EvaluationSettings(
        **benchmark_sources(r.eval_gsm8k_data, r.eval_just_eval_data),
        knowledge_source=r.eval_knowledge_source,
        judge_template=r.eval_judge_template,
        max_new_tokens=r.eval_max_new_tokens,
    )


def _judge(recipe: Recipe) -> GenerationBackend | None:
    """The recipe's `eval_judge`, else the feedback model through the feedback stage's backend; none for GSM8K."""
    r = recipe.rlrf
    if not {"factscore", "just_eval"} & set(r.eval_tasks):
        return None
    if not r.eval_judge:
        return factory.judge_backend(recipe)
    if re.match(r"https?://", r.eval_judge):
        return factory.endpoint_backend(recipe, r.eval_judge, r.eval_judge, None, None)
    from ..backends.transformers_backend import TransformersBackend
    from .cli import split_revision

    model, revision = split_revision(r.eval_judge)
    return TransformersBackend.from_pretrained(model, revision=revision, batch_size=r.feedback_batch_size)
