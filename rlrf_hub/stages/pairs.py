"""Stage 1 selection of the candidate to refine, and Stage 2 pairing rules.

Every rule works per prompt and returns rows of the `pairs` stage in TRL's conversational format. The
prompt of a pair is always what the policy was asked for its candidates, never the reflection prompt a
refinement answered, so a refinement trains the policy to answer the original prompt that well directly.

Rules:
    rlrf: over candidates + refinements, positives are responses rated 1 on every rated aspect, negatives
        all others (failed parses included). The `top_k` best positives (`ranking_key`) are each paired with
        one negative drawn at random without replacement; only when a prompt has fewer negatives than chosen
        positives are negatives reused, each as evenly as possible. Prompts without a positive are dropped,
        and so are prompts whose responses are all positive (there is nothing to reject).
    reward_only: the paper's baseline, which ignores feedback: per prompt, the candidate with the highest
        reward against one other candidate drawn at random (one pair per prompt; `top_k` does not apply).
        It needs a reward model; without rewards it raises. Prompts with fewer than two candidates are
        dropped.
    rs: rejection sampling: the `top_k` best positives, with an empty `rejected`, for SFT.

Randomness is seeded by (seed, iteration, prompt_id), and rows are put in a canonical order first, so the
same inputs in any row order give the same pairs.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import defaultdict

from ..publishing import Published
from ..reward import ranking_key, response_order, reward_key
from .base import IterationContext

NAME = "pairs"
PARENTS = ("feedback",)
CARD_DESCRIPTION = (
    "Each row is a preference pair in TRL's conversational format (`prompt`, `chosen`, `rejected`), ready for "
    "`DPOTrainer`; ids, ratings, rewards and origins of both sides are kept for analysis."
)
PAIRINGS = ("rlrf", "reward_only", "rs")


def applies(ctx: IterationContext) -> bool:
    return True


def key_inputs(ctx: IterationContext) -> dict:
    p = ctx.settings.pairing
    return {"iteration": ctx.t, "rule": ctx.rule, "top_k": p.top_k, "pairing_seed": p.pairing_seed}


def find(ctx: IterationContext) -> Published | None:
    """Worker 0 alone builds the pairs; the others wait for them."""
    return ctx.wait_published(NAME, lambda: ctx.publisher.find(NAME, ctx.t))


def load(ctx: IterationContext, found: Published) -> list[dict]:
    return list(ctx.publisher.load(NAME, ctx.t))


def run(ctx: IterationContext, key: str) -> tuple[list[dict], Published]:
    started, p = time.time(), ctx.settings.pairing
    responses = ctx.outputs["candidates"] + (ctx.outputs.get("refinements") or [])
    pairs = build_pairs(ctx.rule, ctx.by_id, responses, ctx.outputs["feedback"], p.top_k, p.pairing_seed, ctx.t)
    parents = [ctx.published["feedback"]]
    lineage = ctx.lineage(NAME, pairs, parents, started, pairing=ctx.rule, top_k=p.top_k, content_key=key)
    return pairs, ctx.publisher.publish_dataset(NAME, ctx.t, pairs, lineage, CARD_DESCRIPTION)


def is_positive(row: dict) -> bool:
    """Rated 1 on every rated aspect (the feedback stage's `is_positive`); a failed parse is never positive."""
    return bool(row.get("is_positive")) and row.get("parse_status") != "failed"


def _parsed(row: dict) -> bool:
    return row.get("parse_status") != "failed" and row.get("mean_rating") is not None


def select_for_refinement(feedback_rows: list[dict]) -> str | None:
    """The response id of the best-ranked candidate of one prompt (refinements are ignored).

    None when the prompt has no candidate whose feedback parsed: a reflection prompt needs feedback.
    """
    prompt_ids = {row["prompt_id"] for row in feedback_rows}
    if len(prompt_ids) > 1:
        raise ValueError(f"select_for_refinement takes the rows of one prompt, got {len(prompt_ids)} prompts")
    candidates = [row for row in feedback_rows if row.get("origin") == "candidate" and _parsed(row)]
    if not candidates:
        return None
    return max(candidates, key=ranking_key)["response_id"]


def build_pairs(
    rule: str,
    prompts: dict[str, dict],
    responses: list[dict],
    feedback: list[dict],
    top_k: int,
    seed: int,
    iteration: int,
) -> list[dict]:
    """Rows of the `pairs` stage (every column of `rlrf_hub.schemas.PAIRS`), ordered by prompt id then rank.

    Args:
        rule: `rlrf`, `reward_only` or `rs` (see the module docstring).
        prompts: prompt rows by prompt id; the prompt text when a prompt has no candidate row.
        responses: candidate and refinement rows; their text, and the candidates' messages as the prompt.
        feedback: feedback rows (with `reward` filled when there is a reward model), one per response.
        top_k: positives kept per prompt (`rlrf`, `rs`).
        seed / iteration: seed the random choices; `iteration` is also written to every row.
    """
    if rule not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {rule!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if rule == "reward_only":
        _require_rewards(feedback)
    by_id = {row["response_id"]: row for row in responses}
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in feedback:
        groups[row["prompt_id"]].append(row)

    pairs = []
    for prompt_id in sorted(groups):
        rows = sorted(groups[prompt_id], key=lambda r: r["response_id"])
        rng = _rng(seed, iteration, prompt_id)
        if rule == "rlrf":
            matches = _rlrf_matches(rows, top_k, rng)
        elif rule == "rs":
            matches = [(row, None) for row in _top_positives(rows, top_k)]
        else:
            matches = _reward_only_matches(rows, rng)
        if matches:
            own = [by_id[row["response_id"]] for row in rows if row["response_id"] in by_id]
            prompt = _prompt_messages(prompt_id, prompts, own)
            pairs.extend(_pair_row(rule, iteration, prompt_id, prompt, c, r, by_id) for c, r in matches)
    return pairs


def _rng(seed: int, iteration: int, prompt_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}/{iteration}/{prompt_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _top_positives(rows: list[dict], top_k: int) -> list[dict]:
    return sorted((row for row in rows if is_positive(row)), key=ranking_key, reverse=True)[:top_k]


def _rlrf_matches(rows: list[dict], top_k: int, rng: random.Random) -> list[tuple[dict, dict]]:
    chosen = _top_positives(rows, top_k)
    negatives = [row for row in rows if not is_positive(row)]
    if not chosen or not negatives:
        return []
    drawn: list[dict] = []
    while len(drawn) < len(chosen):
        drawn.extend(rng.sample(negatives, len(negatives)))
    return list(zip(chosen, drawn[: len(chosen)], strict=True))


def _reward_only_matches(rows: list[dict], rng: random.Random) -> list[tuple[dict, dict]]:
    candidates = [row for row in rows if row.get("origin") == "candidate"]
    if len(candidates) < 2:
        return []
    best = max(candidates, key=reward_key)
    others = [row for row in candidates if row is not best]
    return [(best, rng.choice(others))]


def _require_rewards(feedback: list[dict]) -> None:
    unscored = [
        row["response_id"] for row in feedback if row.get("origin") == "candidate" and row.get("reward") is None
    ]
    if unscored:
        raise ValueError(
            "pairing 'reward_only' ranks candidates by reward and needs a reward model: set `reward_model` "
            f"in the recipe ({len(unscored)} candidate(s) have no reward, e.g. {unscored[0]})"
        )


def _prompt_messages(prompt_id: str, prompts: dict[str, dict], rows: list[dict]) -> list[dict]:
    """What the policy was asked: a candidate's messages, else the prompt text as one user turn."""
    candidates = sorted((r for r in rows if r.get("origin") == "candidate"), key=response_order)
    for row in candidates:
        messages = row.get("messages")
        if messages and messages[-1]["role"] == "user":
            return [{"role": m["role"], "content": m["content"]} for m in messages]
    if prompt_id in prompts:
        text = prompts[prompt_id]["prompt"]
    elif candidates:
        text = candidates[0]["prompt"]
    else:
        raise KeyError(f"prompt {prompt_id} is neither in the prompts nor has a candidate row")
    return [{"role": "user", "content": text}]


def _pair_row(
    rule: str,
    iteration: int,
    prompt_id: str,
    prompt: list[dict],
    chosen: dict,
    rejected: dict | None,
    by_id: dict[str, dict],
) -> dict:
    return {
        "prompt_id": prompt_id,
        "iteration": iteration,
        "pairing": rule,
        "prompt": [dict(m) for m in prompt],
        "chosen": _assistant(chosen, by_id),
        "rejected": _assistant(rejected, by_id) if rejected else [],
        "chosen_id": chosen["response_id"],
        "rejected_id": rejected["response_id"] if rejected else None,
        "chosen_origin": chosen.get("origin"),
        "rejected_origin": rejected.get("origin") if rejected else None,
        "chosen_ratings": list(chosen.get("ratings") or []),
        "rejected_ratings": list(rejected.get("ratings") or []) if rejected else [],
        "chosen_reward": chosen.get("reward"),
        "rejected_reward": rejected.get("reward") if rejected else None,
    }


def _assistant(row: dict, by_id: dict[str, dict]) -> list[dict]:
    response = by_id.get(row["response_id"])
    if response is None:
        raise KeyError(f"feedback on {row['response_id']} has no response row")
    return [{"role": "assistant", "content": response["response"]}]


def pair_stats(pairs: list[dict], feedback: list[dict]) -> dict:
    """Counts for the run summary and the pairs dataset card."""
    positives = [row for row in feedback if is_positive(row)]
    return {
        "prompts": len({row["prompt_id"] for row in feedback}),
        "responses": len(feedback),
        "parse_failures": sum(1 for row in feedback if row.get("parse_status") == "failed"),
        "prompts_with_positive": len({row["prompt_id"] for row in positives}),
        "positives": len(positives),
        "pairs": len(pairs),
        "prompts_paired": len({row["prompt_id"] for row in pairs}),
        "chosen_refinements": sum(1 for row in pairs if row["chosen_origin"] == "refinement"),
    }
