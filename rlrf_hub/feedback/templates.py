"""Prompts of the feedback stage and the JSON contract the judge answers in.

Three prompts: the judge picks the aspects a general instruction needs (`selection_messages`), the judge
critiques and rates a response on given aspects (`rating_messages`), and the policy revises its answer
with that feedback (`reflection_messages`). The judge's replies follow `selection_schema` and
`rating_schema`; every property is required and every choice an enum, so constrained decoding stays fast
(TGI is slow on optional properties) and a small model cannot wander off the contract.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from ..aspects import ASPECT_NAMES, BY_NAME, LEVELS, RATINGS, rubric_text

CRITIQUE_MAX_CHARS = 300
CRITIQUE_MIN_CHARS = 20
REFERENCE_MAX_CHARS = 4000

JUDGE_SYSTEM = (
    "You are a strict, fair reviewer of answers written by AI assistants. You judge only what is asked, "
    "and you always reply in the exact JSON format requested."
)

SELECTION_TEMPLATE = """\
An AI assistant will receive the instruction below. Before any answer is reviewed, decide which qualities \
matter most for answering this particular instruction well.

## Qualities
{qualities}

## Instruction
{prompt}

## Your task
Choose the {k} qualities from the list that matter most for this instruction, most important first, each \
at most once. Write the names exactly as in the list. Reply with JSON only, in this form:
{example}"""

RATING_TEMPLATE = """\
Review the AI assistant's response to the instruction below on each aspect of the rubric.

## Rubric
Ratings: -1 = {failure}; 0 = {moderate}; 1 = {success}.
{rubric}

## Instruction
{prompt}
{reference_block}
## Response
{response}

## Your task
For each aspect, write a short critique (one or two sentences) that points at concrete strengths or \
problems of the response, then give the rating -1, 0 or 1. Reply with JSON only, in this form:
{example}"""

REFERENCE_BLOCK = """
## Reference
Trusted material to check the response against (a correct solution, or facts about the subject). The \
response does not need to copy its wording, but anything that contradicts it is an error.
{reference}
"""

REFLECTION_TEMPLATE = """\
A reviewer read your answer and left this feedback:
{feedback}

Write a better answer to my original request: fix every problem the reviewer pointed out and keep what \
was already good. Reply with the new answer only, written as if you were answering the request for the \
first time. Do not apologise, and do not mention the reviewer, the feedback, an earlier answer or that \
you changed anything."""


def selection_messages(prompt: str, k: int) -> list[dict[str, str]]:
    """Ask the judge which `k` of the eight aspects this instruction needs most, ordered by importance."""
    qualities = "\n".join(f"- {a}: {BY_NAME[a].criterion}" for a in ASPECT_NAMES)
    example = json.dumps({"aspects": [f"<quality {i + 1}>" for i in range(k)]})
    user = SELECTION_TEMPLATE.format(qualities=qualities, prompt=prompt.strip(), k=k, example=example)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def rating_messages(
    prompt: str, response: str, aspects: Sequence[str], reference: str | None = None
) -> list[dict[str, str]]:
    """Ask the judge for a critique and a rating in {-1, 0, 1} per aspect, optionally checked against a reference."""
    reference_block = ""
    if reference and reference.strip():
        reference_block = REFERENCE_BLOCK.format(reference=_clip(reference.strip(), REFERENCE_MAX_CHARS))
    entries = ", ".join(f'"{a}": {{"critique": "<one or two sentences>", "rating": <-1, 0 or 1>}}' for a in aspects)
    user = RATING_TEMPLATE.format(
        failure=LEVELS[-1],
        moderate=LEVELS[0],
        success=LEVELS[1],
        rubric=rubric_text(list(aspects)),
        prompt=prompt.strip(),
        reference_block=reference_block,
        response=response.strip(),
        example="{" + entries + "}",
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def reflection_messages(prompt: str, response: str, feedback_text: str) -> list[dict[str, str]]:
    """The policy's refinement prompt: its own answer as the assistant turn, then the feedback and a request to
    revise it."""
    return [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": response},
        {"role": "user", "content": REFLECTION_TEMPLATE.format(feedback=feedback_text.strip())},
    ]


def selection_schema(k: int) -> dict[str, Any]:
    """`{"aspects": [name, ...]}` with exactly `k` names. Uniqueness is checked by the parser: llguidance
    does not implement `uniqueItems`."""
    return {
        "type": "object",
        "properties": {
            "aspects": {
                "type": "array",
                "items": {"type": "string", "enum": list(ASPECT_NAMES)},
                "minItems": k,
                "maxItems": k,
            }
        },
        "required": ["aspects"],
        "additionalProperties": False,
    }


def rating_schema(aspects: Sequence[str], max_critique_chars: int = CRITIQUE_MAX_CHARS) -> dict[str, Any]:
    """`{"<Aspect>": {"critique": str, "rating": -1 | 0 | 1}, ...}` in the given order, everything required.

    The critique comes before the rating so that the judge reasons before it commits to a number.
    """
    for name in aspects:
        if name not in BY_NAME:
            raise KeyError(f"unknown aspect {name!r}")
    entry = {
        "type": "object",
        "properties": {
            "critique": {"type": "string", "maxLength": max_critique_chars},
            "rating": {"type": "integer", "enum": list(RATINGS)},
        },
        "required": ["critique", "rating"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {name: entry for name in aspects},
        "required": list(aspects),
        "additionalProperties": False,
    }


def critique_limit(num_aspects: int, max_new_tokens: int) -> int:
    """The longest critique that still lets a reply with `num_aspects` entries fit in `max_new_tokens`.

    A constrained reply cut off by the token limit is invalid JSON, so the bound shrinks with the number of
    aspects: about 16 tokens of JSON per entry with SmolLM2's tokenizer (18 counted), and a conservative 3
    characters per token of critique. Below `CRITIQUE_MIN_CHARS` the budget is too small for the aspects:
    raise `feedback_max_new_tokens` (all eight aspects need about 300).
    """
    budget = (max_new_tokens - 4 - 18 * num_aspects) * 3 // max(num_aspects, 1)
    return max(CRITIQUE_MIN_CHARS, min(CRITIQUE_MAX_CHARS, budget))


def dump_ratings(aspects: Sequence[str], ratings: Sequence[int], critiques: Sequence[str]) -> str:
    """Serialise feedback in the contract format (what a perfect judge replies)."""
    return json.dumps(
        {a: {"critique": c, "rating": int(r)} for a, r, c in zip(aspects, ratings, critiques, strict=True)},
        ensure_ascii=False,
    )


def format_feedback(aspects: Sequence[str], ratings: Sequence[int], critiques: Sequence[str]) -> str:
    """Human-readable feedback, one `Aspect (rating): critique` line per aspect."""
    lines = []
    for aspect, rating, critique in zip(aspects, ratings, critiques, strict=True):
        critique = " ".join(str(critique or "").split())
        lines.append(f"{aspect} ({rating}): {critique}" if critique else f"{aspect} ({rating})")
    return "\n".join(lines)


def _clip(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max_chars].rstrip() + " [...]"


def _fingerprint() -> str:
    """Covers the prompt texts and the reply contract (rubric changes are covered by `rubric_sha256`)."""
    payload = [JUDGE_SYSTEM, SELECTION_TEMPLATE, RATING_TEMPLATE, REFERENCE_BLOCK, REFLECTION_TEMPLATE]
    payload += [selection_schema(3), rating_schema(list(ASPECT_NAMES)), critique_limit(3, 256)]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


TEMPLATES_SHA256 = _fingerprint()
