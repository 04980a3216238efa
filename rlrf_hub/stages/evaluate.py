"""After the loop trains M_t: benchmark it (M0 too, with M1) and put the results on M_t's adapter card, so the cards
show the run's models side by side as the run goes. Worker 0 alone evaluates.

Per-item outputs stay under `<output_dir>/eval/M<t>/`; what is already on a card is not evaluated again. The
benchmarks themselves are `rlrf_hub.evaluation`.
"""

from __future__ import annotations

from ..backends import GenerationBackend
from ..backends.factory import endpoint_backend
from ..evaluation.judging import judge_from_spec
from ..evaluation.results import EvaluationReport
from ..evaluation.runner import EvaluationSettings, benchmark_sources, evaluate_policy
from ..publishing import Published
from .backends import judge_backend, policy_backend
from .base import IterationContext

NAME = "evaluation"
PARENTS: tuple[str, ...] = ()


def applies(ctx: IterationContext) -> bool:
    return bool(ctx.settings.evaluate.tasks) and ctx.shard.merger


def key_inputs(ctx: IterationContext) -> None:
    """Results are not content-keyed: a card that has them is done."""
    return None


def find(ctx: IterationContext) -> EvaluationReport | None:
    return ctx.publisher.find_results(ctx.t + 1)


def load(ctx: IterationContext, found: EvaluationReport) -> EvaluationReport:
    return found


def run(ctx: IterationContext, key: None) -> tuple[list[EvaluationReport], Published]:
    """Evaluate M_(t+1), and M0 when that is M1."""
    model_index = ctx.t + 1
    judge = _judge(ctx)
    indices = [0, model_index] if model_index == 1 else [model_index]
    reports = [_evaluate(ctx, index, judge) for index in indices]
    return reports, ctx.publisher.publish_results(model_index, reports)


def _evaluate(ctx: IterationContext, index: int, judge: GenerationBackend | None) -> EvaluationReport:
    """The policy is made in the call and released once it has answered, so it and the judge are never both
    working in memory."""
    s, publisher = ctx.settings, ctx.publisher
    adapter = publisher.find_adapter(index) if index else None
    return evaluate_policy(
        policy_backend(s, str(publisher.adapter_dir(index)) if adapter else None),
        list(s.evaluate.tasks),
        judge,
        s.evaluate.limit,
        s.output_dir / "eval" / f"M{index}",
        _settings(ctx),
        model=s.policy.model,
        model_revision=s.policy.revision,
        adapter=adapter.location if adapter else None,
        adapter_revision=adapter.revision if adapter else None,
        iteration=index,
        release_policy=True,
    )


def _settings(ctx: IterationContext) -> EvaluationSettings:
    e = ctx.settings.evaluate
    return EvaluationSettings(
        **benchmark_sources(e.gsm8k_data, e.just_eval_data),
        knowledge_source=e.knowledge_source,
        judge_template=e.judge_template,
        max_new_tokens=e.max_new_tokens,
    )


def _judge(ctx: IterationContext) -> GenerationBackend | None:
    """The recipe's `eval_judge`, else the feedback model through the feedback stage's backend; none for GSM8K."""
    s = ctx.settings
    if not {"factscore", "just_eval"} & set(s.evaluate.tasks):
        return None
    if not s.evaluate.judge:
        return judge_backend(s)

    def endpoint(url: str) -> GenerationBackend:
        return endpoint_backend(s.endpoints, url, url, None, None)

    return judge_from_spec(s.evaluate.judge, s.feedback.feedback_batch_size, endpoint)
