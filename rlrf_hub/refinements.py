"""Stage 1.3: refine the selected candidate of each prompt with its feedback (m samples from the policy)."""

from __future__ import annotations

from collections import defaultdict

from .feedback.judge import feedback_text
from .feedback.templates import reflection_messages
from .pairs import select_for_refinement
from .sampling import SamplingJob


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
