"""Stage 1.1: n candidate responses per prompt from the current policy."""

from __future__ import annotations

from .sampling import SamplingJob


def candidate_jobs(prompts: list[dict]) -> list[SamplingJob]:
    """The policy sees the prompt alone, as a single user turn."""
    return [SamplingJob(prompt=row, messages=[{"role": "user", "content": row["prompt"]}]) for row in prompts]
