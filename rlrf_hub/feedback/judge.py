"""The feedback stage: which aspects each prompt is rated on, and one feedback row per response.

Aspects (paper): a general prompt is rated on the `k` aspects the judge picks for it, a math prompt on
Logical Correctness and a biography on Factuality, the latter two with the prompt's reference shown to the
judge. `aspect_mode="all"` rates every prompt on all eight. Where Logical Correctness is the only aspect and
the task has a rule-based verifier (`args.verifier_tasks`) and the reference states a final number, the
verifier rates the row and no judge is asked.

Judge replies that do not parse are asked again, only those, with a new seed, up to `args.max_parse_retries`
times. A row whose replies never parse is kept with `parse_status="failed"`: dropping it would bias the
dataset towards responses the judge found easy to rate.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..aspects import ASPECT_KEYS, ASPECT_NAMES, BY_NAME
from ..backends.base import GenerationBackend, GenerationRequest, SamplingParams
from .parsing import ParsedRatings, parse_ratings, parse_selection
from .templates import (
    critique_limit,
    dump_ratings,
    format_feedback,
    rating_messages,
    rating_schema,
    selection_messages,
    selection_schema,
)
from .verifier import VERIFIED_ASPECT, VERIFIER_NAME, reference_number, verify_math

logger = logging.getLogger(__name__)

TASK_ASPECTS = {"math": ["Logical Correctness"], "bio": ["Factuality"]}
# What a general instruction is rated on when the judge's choice never parses: following the instruction,
# sound reasoning, enough substance; further aspects in this order when more than three are asked for.
GENERAL_FALLBACK = (
    "Comprehension",
    "Logical Correctness",
    "Completeness",
    "Factuality",
    "Readability",
    "Insightfulness",
    "Metacognition",
    "Harmlessness",
)
FEEDBACK_SEED = 1234
# A retry of a greedy judge samples: with temperature 0 a new seed would repeat the same reply.
RETRY_TEMPERATURE = 0.7
NO_FEEDBACK_TEXT = "No reviewer feedback is available. Check the answer for mistakes and improve it where you can."


@dataclass(frozen=True)
class FeedbackSettings:
    """The recipe's feedback keys (see `rlrf_hub.config.RLRFArguments`, whose fields have the same names)."""

    feedback_model: str = ""
    feedback_revision: str | None = None
    aspect_mode: str = "paper"
    num_general_aspects: int = 3
    verifier_tasks: Sequence[str] = ("math",)
    constrained_decoding: bool = True
    feedback_max_new_tokens: int = 256
    feedback_temperature: float = 0.7
    feedback_batch_size: int = 16
    max_parse_retries: int = 2


@dataclass
class _Ask:
    """One judge question: its prompt, the schema its reply follows and how the reply is read."""

    messages: list[dict[str, str]]
    schema: dict[str, Any]
    parse: Callable[[str], Any]


@dataclass
class _Answer:
    parsed: Any
    text: str
    attempts: int


def aspects_for(task: str, aspect_mode: str, k: int) -> list[str]:
    """The aspects a prompt of `task` is rated on without asking the judge.

    math -> Logical Correctness, bio -> Factuality; `all` mode -> all eight. For general prompts in `paper`
    mode the judge chooses (`select_aspects`); what this returns then is the fallback used when it cannot.
    """
    if aspect_mode == "all":
        return list(ASPECT_NAMES)
    if task in TASK_ASPECTS:
        return list(TASK_ASPECTS[task])
    return list(GENERAL_FALLBACK[:k])


def select_aspects(
    prompts: Sequence[dict], backend: GenerationBackend, args: FeedbackSettings, stats: dict | None = None
) -> dict[str, list[str]]:
    """Ask the judge, once per prompt in one batch, which `args.num_general_aspects` aspects it needs most.

    Every prompt given is asked (pass the general ones). Returns `{prompt_id: [aspect, ...]}` in order of
    importance; a prompt whose reply never parses gets `GENERAL_FALLBACK[:k]`, logged and counted in
    `stats["selection_fallbacks"]`.
    """
    k = args.num_general_aspects
    asks = [
        _Ask(selection_messages(p["prompt"], k), selection_schema(k), lambda text: parse_selection(text, k))
        for p in prompts
    ]
    answers = _ask_judge(asks, backend, args, FEEDBACK_SEED, "selecting aspects", stats)
    chosen, fallbacks = {}, 0
    for prompt, answer in zip(prompts, answers, strict=True):
        if answer.parsed is None:
            fallbacks += 1
            chosen[prompt["prompt_id"]] = list(GENERAL_FALLBACK[:k])
        else:
            chosen[prompt["prompt_id"]] = answer.parsed
    if fallbacks:
        logger.warning(
            "the judge's aspect choice did not parse for %d of %d prompts; they use %s",
            fallbacks,
            len(prompts),
            list(GENERAL_FALLBACK[:k]),
        )
    if stats is not None:
        stats["selection_fallbacks"] = stats.get("selection_fallbacks", 0) + fallbacks
    return chosen


def rate_responses(
    responses: Sequence[dict],
    prompts: dict[str, dict],
    aspects: dict[str, list[str]],
    backend: GenerationBackend,
    args: FeedbackSettings,
    iteration: int,
    stats: dict | None = None,
) -> list[dict]:
    """One row of the `feedback` stage per response, in the order given; no row is ever dropped.

    Args:
        responses: rows of the candidates/refinements stage.
        prompts: prompt rows by prompt id (their `reference` goes to the judge or the verifier).
        aspects: aspects per prompt id (`select_aspects` / `aspects_for`); a prompt missing here gets
            `aspects_for(task, ...)`.
        backend: the judge; all judge rows are sent in one `generate` call per attempt.
        args: feedback settings (`constrained_decoding`, `feedback_*`, `max_parse_retries`, `verifier_tasks`).
        iteration: written to every row, and seeds the judge.
        stats: if given, updated with `judge_requests`, `judge_tokens` and `judge_retries`.
    """
    rows: list[dict | None] = [None] * len(responses)
    judged: list[tuple[int, list[str]]] = []
    asks: list[_Ask] = []
    for index, response in enumerate(responses):
        if response["prompt_id"] not in prompts:
            raise KeyError(f"response {response['response_id']} has no prompt row {response['prompt_id']!r}")
        prompt = prompts[response["prompt_id"]]
        names = list(
            aspects.get(response["prompt_id"])
            or aspects_for(response["task"], args.aspect_mode, args.num_general_aspects)
        )
        reference = prompt.get("reference") or None
        if _uses_verifier(response["task"], names, reference, args):
            rows[index] = _verifier_row(response, iteration, reference)
            continue
        limit = critique_limit(len(names), args.feedback_max_new_tokens)
        judged.append((index, names))
        asks.append(
            _Ask(
                rating_messages(response.get("prompt") or prompt["prompt"], response["response"], names, reference),
                rating_schema(names, limit),
                lambda text, names=names, limit=limit: parse_ratings(text, names, limit),
            )
        )
    answers = _ask_judge(asks, backend, args, FEEDBACK_SEED + 1000 * (iteration + 1), "rating responses", stats)
    for (index, names), answer in zip(judged, answers, strict=True):
        rows[index] = _judged_row(responses[index], iteration, names, answer, backend)
    return rows  # type: ignore[return-value]


def feedback_text(row: dict) -> str:
    """The feedback a reflection prompt shows the policy for this feedback row."""
    if row.get("parse_status") != "failed" and row.get("critique"):
        return row["critique"]
    return NO_FEEDBACK_TEXT


def unrated_row(response: dict, iteration: int) -> dict:
    """A feedback row for a response that no judge rated (the reward-only baseline): `unrated`, 0 attempts."""
    return _row(response, iteration, [], None, raw="", status="unrated", attempts=0, judge=None, revision=None)


def summarise(rows: Sequence[dict]) -> dict[str, Any]:
    """Counts for cards and logs. `parse_failure_rate` is over rows that went to the judge (unrated rows and
    verifier rows excluded); 0.0 when there are none."""
    statuses = Counter(row["parse_status"] for row in rows)
    unrated = statuses.get("unrated", 0)
    failed = statuses.get("failed", 0)
    judged = statuses.get("strict", 0) + statuses.get("tolerant", 0) + failed
    attempts = [row["parse_attempts"] for row in rows if row["parse_status"] != "verifier" and row["parse_attempts"]]
    means = [row["mean_rating"] for row in rows if row.get("mean_rating") is not None]
    return {
        "rows": len(rows),
        "strict": statuses.get("strict", 0),
        "tolerant": statuses.get("tolerant", 0),
        "verifier": statuses.get("verifier", 0),
        "failed": failed,
        "unrated": unrated,
        "parse_failure_rate": failed / judged if judged else 0.0,
        "mean_parse_attempts": sum(attempts) / len(attempts) if attempts else 0.0,
        "positives": sum(1 for row in rows if row.get("is_positive")),
        "positive_rate": sum(1 for row in rows if row.get("is_positive")) / len(rows) if rows else 0.0,
        "mean_rating": sum(means) / len(means) if means else None,
        "by_task": dict(Counter(row["task"] for row in rows)),
    }


def _ask_judge(
    asks: Sequence[_Ask],
    backend: GenerationBackend,
    args: FeedbackSettings,
    seed: int,
    desc: str,
    stats: dict | None,
) -> list[_Answer]:
    """Ask every question, then ask again only those whose reply did not parse, each time with a new seed."""
    answers = [_Answer(None, "", 0) for _ in asks]
    pending = list(range(len(asks)))
    for attempt in range(args.max_parse_retries + 1):
        if not pending:
            break
        requests = [
            GenerationRequest(asks[i].messages, n=1, json_schema=asks[i].schema if args.constrained_decoding else None)
            for i in pending
        ]
        label = desc if attempt == 0 else f"{desc} (retry {attempt}, {len(pending)} replies)"
        outputs = backend.generate(requests, _judge_params(args, seed + attempt, retry=attempt > 0), label)
        still_failing = []
        for i, output in zip(pending, outputs, strict=True):
            generation = output[0]
            answers[i] = _Answer(asks[i].parse(generation.text), generation.text, attempt + 1)
            if answers[i].parsed is None:
                still_failing.append(i)
            if stats is not None:
                stats["judge_tokens"] = stats.get("judge_tokens", 0) + generation.num_tokens
        if stats is not None:
            stats["judge_requests"] = stats.get("judge_requests", 0) + len(pending)
            stats["judge_retries"] = stats.get("judge_retries", 0) + (len(pending) if attempt else 0)
        pending = still_failing
    return answers


def _judge_params(args: FeedbackSettings, seed: int, retry: bool) -> SamplingParams:
    temperature = args.feedback_temperature
    if retry and temperature <= 0:
        temperature = RETRY_TEMPERATURE
    return SamplingParams(
        max_new_tokens=args.feedback_max_new_tokens,
        temperature=temperature,
        do_sample=temperature > 0,
        seed=seed,
    )


def _uses_verifier(task: str, names: list[str], reference: str | None, args: FeedbackSettings) -> bool:
    return task in args.verifier_tasks and names == [VERIFIED_ASPECT] and reference_number(reference) is not None


def _verifier_row(response: dict, iteration: int, reference: str) -> dict:
    verdict = verify_math(response["response"], reference)
    parsed = ParsedRatings([VERIFIED_ASPECT], [verdict.rating], [verdict.critique], "verifier")
    raw = dump_ratings(parsed.aspects, parsed.ratings, parsed.critiques)
    return _row(response, iteration, parsed.aspects, parsed, raw, "verifier", 0, VERIFIER_NAME, None)


def _judged_row(response: dict, iteration: int, names: list[str], answer: _Answer, backend) -> dict:
    parsed: ParsedRatings | None = answer.parsed
    status = parsed.status if parsed else "failed"
    revision = getattr(backend, "revision", None)
    return _row(response, iteration, names, parsed, answer.text, status, answer.attempts, backend.model_id, revision)


def _row(
    response: dict,
    iteration: int,
    names: list[str],
    parsed: ParsedRatings | None,
    raw: str,
    status: str,
    attempts: int,
    judge: str | None,
    revision: str | None,
) -> dict:
    """A row with every column of `rlrf_hub.schemas.FEEDBACK`. Without ratings, `ratings` holds one null per
    aspect (never an empty list, which `all(r == 1 ...)` would read as positive)."""
    ratings = list(parsed.ratings) if parsed else [None] * len(names)
    critiques = list(parsed.critiques) if parsed else [None] * len(names)
    by_key = dict(zip((BY_NAME[n].key for n in names), ratings, strict=True)) if parsed else {}
    return {
        "prompt_id": response["prompt_id"],
        "response_id": response["response_id"],
        "iteration": iteration,
        "origin": response["origin"],
        "task": response["task"],
        "aspects": list(names),
        "ratings": ratings,
        "critiques": critiques,
        **{f"rating_{key}": by_key.get(key) for key in ASPECT_KEYS},
        "critique": format_feedback(names, parsed.ratings, parsed.critiques) if parsed else "",
        "raw_feedback": raw,
        "parse_status": status,
        "parse_attempts": attempts,
        "mean_rating": sum(ratings) / len(ratings) if parsed and ratings else None,
        "is_positive": bool(parsed) and bool(ratings) and all(r == 1 for r in ratings),
        "reward": None,
        "judge": judge,
        "judge_revision": revision,
    }
