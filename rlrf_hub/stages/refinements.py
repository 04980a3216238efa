"""Stage 1.3: refine the selected candidate of each prompt with its feedback (m samples from the policy)."""

from __future__ import annotations

from collections import defaultdict

from ..feedback.judge import feedback_text
from ..feedback.templates import reflection_messages
from ..publishing import Published
from . import feedback as feedback_stage
from .base import IterationContext
from .candidates import sample_and_publish
from .pairs import select_for_refinement
from .sampling import SamplingJob

NAME = "refinements"
PARENTS = ("candidates", "policy")
CARD_DESCRIPTION = (
    "Each row is one refinement: the policy was shown its best candidate (`parent_id`) with that candidate's "
    "feedback and asked for an improved answer."
)


def refinement_jobs(prompts: list[dict], candidates: list[dict], feedback: list[dict]) -> list[SamplingJob]:
    """One job per prompt whose best candidate (by reward, see `rlrf_hub.reward.ranking_key`) has feedback.

    A prompt whose best candidate has no usable feedback (every judge reply failed to parse) is not refined.
    """
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for row in feedback:
        by_prompt[row["prompt_id"]].append(row)
    responses = {row["response_id"]: row for row in candidates}
    feedback_by_id = {row["response_id"]: row for row in feedback}
    jobs = []
    for prompt in prompts:
        chosen = select_for_refinement(by_prompt.get(prompt["prompt_id"], []))
        if chosen is None or feedback_by_id[chosen]["parse_status"] == "failed":
            continue
        messages = reflection_messages(
            prompt["prompt"], responses[chosen]["response"], feedback_text(feedback_by_id[chosen])
        )
        jobs.append(SamplingJob(prompt=prompt, messages=messages, parent_id=chosen))
    return jobs


def applies(ctx: IterationContext) -> bool:
    """The reward-only baseline refines nothing."""
    return ctx.rule != "reward_only"


def key_inputs(ctx: IterationContext) -> dict:
    """A refinement depends on the feedback it was shown, so it has the feedback stage's inputs."""
    return feedback_stage.key_inputs(ctx)


def find(ctx: IterationContext) -> Published | None:
    return ctx.publisher.find(NAME, ctx.t)


def load(ctx: IterationContext, found: Published) -> list[dict]:
    return list(ctx.publisher.load(NAME, ctx.t))


def run(ctx: IterationContext, key: str) -> tuple[list[dict], Published]:
    """Rate the candidates (kept with the feedback stage's work), then refine the best of each prompt."""
    candidates = ctx.outputs["candidates"]
    feedback = feedback_stage.rated_candidates(ctx)
    jobs = refinement_jobs(ctx.prompts, candidates, feedback)
    num = ctx.settings.sampling.num_refinements
    return sample_and_publish(ctx, key, NAME, CARD_DESCRIPTION, jobs, num, [ctx.published["candidates"]])
