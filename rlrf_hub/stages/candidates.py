"""Stage 1.1: n candidate responses per prompt from the current policy."""

from __future__ import annotations

import time

from ..backends import SamplingParams
from ..ids import response_id
from ..publishing import Published
from .base import IterationContext, publish_rows
from .sampling import SamplingJob, sample_responses

NAME = "candidates"
PARENTS = ("prompts", "policy")
CARD_DESCRIPTION = (
    "Each row is one response sampled from the current policy for a prompt; `sample_index` numbers the samples of a "
    "prompt."
)
SAMPLING_INPUTS = ("temperature", "top_p", "max_new_tokens")


def candidate_jobs(prompts: list[dict]) -> list[SamplingJob]:
    """The policy sees the prompt alone, as a single user turn."""
    return [SamplingJob(prompt=row, messages=[{"role": "user", "content": row["prompt"]}]) for row in prompts]


def applies(ctx: IterationContext) -> bool:
    return True


def sampling_inputs(ctx: IterationContext) -> dict:
    s = ctx.settings.sampling
    return {name: getattr(s, name) for name in SAMPLING_INPUTS}


def key_inputs(ctx: IterationContext) -> dict:
    return {**ctx.policy_inputs(), "num_candidates": ctx.settings.sampling.num_candidates, **sampling_inputs(ctx)}


def find(ctx: IterationContext) -> Published | None:
    return ctx.publisher.find(NAME, ctx.t)


def load(ctx: IterationContext, found: Published) -> list[dict]:
    return list(ctx.publisher.load(found.name, ctx.t))


def run(ctx: IterationContext, key: str) -> tuple[list[dict], Published]:
    jobs = candidate_jobs(ctx.prompts)
    num, parents = ctx.settings.sampling.num_candidates, [ctx.published["prompts"]]
    return sample_and_publish(ctx, key, NAME, CARD_DESCRIPTION, jobs, num, parents)


def sample_and_publish(
    ctx: IterationContext,
    key: str,
    stage: str,
    description: str,
    jobs: list[SamplingJob],
    num_samples: int,
    parents: list[Published],
) -> tuple[list[dict], Published]:
    """Sample `num_samples` responses per job with the policy M_t (this worker's chunks) and publish the stage."""
    started = time.time()
    checkpoint = ctx.checkpoint(stage, key)
    origin = "candidate" if stage == NAME else "refinement"
    s = ctx.settings.sampling
    sample_responses(
        jobs,
        ctx.backends.policy(),
        _sampling_params(ctx),
        num_samples,
        ctx.t,
        origin,
        checkpoint,
        sequences_per_chunk=2 * s.generation_batch_size,
        shard=ctx.shard,
    )
    expected = [response_id(job.prompt["prompt_id"], ctx.t, origin, k) for job in jobs for k in range(num_samples)]

    def lineage(rows: list[dict], stats: dict) -> dict:
        return ctx.lineage(stage, rows, parents, started)

    return publish_rows(ctx, stage, description, checkpoint, expected, key, lineage)


def _sampling_params(ctx: IterationContext) -> SamplingParams:
    s = ctx.settings.sampling
    return SamplingParams(
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        do_sample=True,
        seed=ctx.settings.policy.seed,
    )
