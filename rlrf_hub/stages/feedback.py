"""Stage 1.2: fine-grained feedback on every candidate and refinement, from the judge or a verifier, with rewards.

The candidates are rated first, since the refinement of a prompt needs the feedback on all its candidates (the
refinements stage asks for them), then the refinements; both are kept in this stage's checkpoint and published
together. What a judge is asked and how its replies are read is `rlrf_hub.feedback`.
"""

from __future__ import annotations

import time

from ..aspects import rubric_sha256
from ..feedback import judge
from ..feedback.templates import TEMPLATES_SHA256
from ..publishing import Published, StageCheckpoint
from ..reward import attach_rewards
from ..sharding import wait_for_files
from .backends import ENDPOINT_PREFIX
from .base import IterationContext, publish_rows
from .candidates import sampling_inputs

NAME = "feedback"
PARENTS = ("candidates", "policy")
CARD_DESCRIPTION = (
    "Each row is the fine-grained feedback on one rated response (candidates and refinements alike, see `origin`): "
    "the rated aspects in order, a rating in {-1, 0, 1} and a critique for each, one `rating_<aspect>` column per "
    "aspect (empty when not rated), the raw reply of the judge, whether it parsed, and the reward used for ranking."
)
JUDGE_INPUTS = (
    "feedback_model",
    "feedback_revision",
    "aspect_mode",
    "num_general_aspects",
    "verifier_tasks",
    "constrained_decoding",
    "feedback_max_new_tokens",
    "feedback_temperature",
    "max_parse_retries",
)
REWARD_INPUTS = ("reward_model", "reward_revision")


def applies(ctx: IterationContext) -> bool:
    return True


def key_inputs(ctx: IterationContext) -> dict:
    s = ctx.settings
    return {
        **ctx.policy_inputs(),
        "rule": ctx.rule,
        "rubric": rubric_sha256(),
        "templates": TEMPLATES_SHA256,
        **{name: getattr(s.feedback, name) for name in JUDGE_INPUTS},
        **{name: getattr(s.reward, name) for name in REWARD_INPUTS},
        "num_refinements": s.sampling.num_refinements,
        **sampling_inputs(ctx),
    }


def find(ctx: IterationContext) -> Published | None:
    return ctx.publisher.find(NAME, ctx.t)


def load(ctx: IterationContext, found: Published) -> list[dict]:
    return list(ctx.publisher.load(NAME, ctx.t))


def run(ctx: IterationContext, key: str) -> tuple[list[dict], Published]:
    started = time.time()
    checkpoint = ctx.checkpoint(NAME, key)
    candidates = ctx.outputs["candidates"]
    refinements = ctx.outputs.get("refinements") or []
    rated_candidates(ctx)
    rate(ctx, refinements, checkpoint)
    parents = [p for p in (ctx.published["candidates"], ctx.published.get("refinements")) if p]

    def lineage(rows: list[dict], stats: dict) -> dict:
        summary = judge.summarise(rows)
        return ctx.lineage(
            NAME,
            rows,
            parents,
            started,
            counts=summary,
            parse_failure_rate=summary["parse_failure_rate"],
            tokens_generated=stats.get("judge_tokens", 0),
            judge_requests=stats.get("judge_requests", 0),
            endpoint={k: v for k, v in stats.items() if k.startswith(ENDPOINT_PREFIX)} or None,
        )

    ctx.judge_stats.update(ctx.backends.judge_counters())
    expected = [row["response_id"] for row in candidates + refinements]
    return publish_rows(ctx, NAME, CARD_DESCRIPTION, checkpoint, expected, key, lineage)


def rated_candidates(ctx: IterationContext) -> list[dict]:
    """The feedback on every candidate, in candidate order. Sharded, this is a meeting point: each worker rates its
    chunks, and all wait for every worker's ratings (the refinements need them), unless nothing is refined."""
    if "rated" not in ctx.outputs:
        checkpoint = ctx.checkpoint(NAME, ctx.key(NAME, PARENTS, key_inputs(ctx)))
        candidates = ctx.outputs["candidates"]
        rate(ctx, candidates, checkpoint)
        if ctx.shard.sharded and ctx.rule != "reward_only":
            checkpoint.mark_done("rated", {"rows": checkpoint.own_rows()})
            ctx.wait_for_shares(checkpoint, "rated", f"ratings of the candidates of iteration {ctx.t}")
        rated = {row["response_id"]: row for row in checkpoint.rows()}
        ctx.outputs["rated"] = [rated[row["response_id"]] for row in candidates if row["response_id"] in rated]
    return ctx.outputs["rated"]


def rate(ctx: IterationContext, responses: list[dict], checkpoint: StageCheckpoint) -> None:
    """Feedback (and reward) for this worker's chunks of `responses`, skipping checkpointed rows."""
    done = checkpoint.done("response_id")
    aspects = None if ctx.rule == "reward_only" else _aspects(ctx, checkpoint)
    size = 4 * ctx.settings.feedback.feedback_batch_size
    for chunk in ctx.shard.take([responses[i : i + size] for i in range(0, len(responses), size)]):
        todo = [row for row in chunk if row["response_id"] not in done]
        if not todo:
            continue
        if aspects is None:
            rated = [judge.unrated_row(row, ctx.t) for row in todo]
        else:
            rated = judge.rate_responses(
                todo, ctx.by_id, aspects, ctx.backends.judge(), ctx.settings.feedback, ctx.t, ctx.judge_stats
            )
        checkpoint.append(attach_rewards(rated, todo, ctx.backends.reward()))


def _aspects(ctx: IterationContext, checkpoint: StageCheckpoint) -> dict[str, list[str]]:
    """The aspects of every prompt for this iteration; the judge's choices are kept with the feedback parts."""
    if ctx.aspect_map is None:
        f = ctx.settings.feedback
        chosen = _chosen_aspects(ctx, checkpoint)
        ctx.aspect_map = {
            p["prompt_id"]: chosen.get(p["prompt_id"])
            or judge.aspects_for(p["task"], f.aspect_mode, f.num_general_aspects)
            for p in ctx.prompts
        }
    return ctx.aspect_map


def _chosen_aspects(ctx: IterationContext, checkpoint: StageCheckpoint) -> dict[str, list[str]]:
    """The judge's aspect choice for the general prompts (paper mode), asked once per iteration, chunk by chunk as
    the ratings are; a sharded worker asks for its chunks and then reads every worker's choices (a meeting point)."""
    shard, f = ctx.shard, ctx.settings.feedback
    name = f"aspects-{shard.tag}.json" if shard.sharded else "aspects.json"
    if checkpoint.read_json(name) is None:
        needs_judge = [p for p in ctx.prompts if p["task"] == "general" and f.aspect_mode == "paper"]
        size = 4 * f.feedback_batch_size
        chosen: dict[str, list[str]] = {}
        for chunk in shard.take([needs_judge[i : i + size] for i in range(0, len(needs_judge), size)]):
            chosen.update(judge.select_aspects(chunk, ctx.backends.judge(), f, ctx.judge_stats))
        checkpoint.write_json(name, chosen)
    names = [name]
    if shard.sharded:
        names = [f"aspects-{s.tag}.json" for s in shard.workers()]
        what = f"aspect choices of iteration {ctx.t}"
        wait_for_files(checkpoint, set(names), what, shard, ctx.settings.shard_wait_timeout)
    return {pid: aspects for n in names for pid, aspects in checkpoint.read_json(n).items()}
