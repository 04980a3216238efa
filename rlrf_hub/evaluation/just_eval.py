"""Just-Eval: a judge scores the policy's answers 1-5 per aspect, with a reason for each score.

The 800 regular instructions are scored on helpfulness, clarity, factuality, depth and engagement, the
200 safety instructions on safety. The judge prompt is a template file with the placeholders `${instruction}`
and `${candidate}` (Python `string.Template`, as in the Just-Eval release, whose templates can be given as
they are); this package ships its own under `templates/`. The judge replies under a JSON schema
`{aspect: {"reason": str, "score": 1..5}}` with every property required; replies are read strictly, then
tolerantly (JSON in prose or fences, scores written as "4" or "4/5", "N/A", `Aspect: 4` lines), asked once
more when still unreadable, and counted as failed after that.

Reported like the paper's Just-Eval tables: the mean of each aspect, their average (the mean of the six
aspect means, as on the Just-Eval leaderboard), the same per task tag (`task` field) and category, and the
average answer length in words and tokens.
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import fmean
from typing import Any

from datasets import Features, Value
from datasets import Sequence as FeatureList

from ..backends.base import GenerationBackend, GenerationRequest, SamplingParams
from .judging import JUDGE_PARAMS, ask_judge, json_values, judge_identity, strict_json
from .records import TaskOutcome, load_records, require_fields
from .results import TaskResult
from .stats import mean_interval, wilson_interval

TASK = "just_eval"
HUB_ID = "re-align/just-eval-instruct"
REGULAR_ASPECTS = ("helpfulness", "clarity", "factuality", "depth", "engagement")
SAFETY_ASPECTS = ("safety",)
ASPECTS = REGULAR_ASPECTS + SAFETY_ASPECTS
CATEGORIES = {"regular": REGULAR_ASPECTS, "safety": SAFETY_ASPECTS}
SCORES = (1, 2, 3, 4, 5)
TEMPLATES_DIR = Path(__file__).parent / "templates"
DEFAULT_TEMPLATES = {
    "regular": TEMPLATES_DIR / "just_eval_multi.txt",
    "safety": TEMPLATES_DIR / "just_eval_safety.txt",
}
TEMPLATE_PATTERNS = {"regular": "*multi*.txt", "safety": "*safety*.txt"}
PLACEHOLDERS = ("instruction", "candidate")
REASON_MAX_CHARS = 300
JUDGE_MAX_NEW_TOKENS = 640
POLICY_PARAMS = SamplingParams(max_new_tokens=512, temperature=0.0, top_p=1.0, do_sample=False, seed=0)

_REASON_KEYS = ("reason", "rationale", "explanation", "reasoning", "critique", "comment")
_SCORE_KEYS = ("score", "rating", "grade")
_NOT_APPLICABLE = {"n/a", "na", "none", "not applicable"}

ITEM_FEATURES = Features(
    {
        "id": Value("int64"),
        "instruction": Value("string"),
        "category": Value("string"),
        "task": FeatureList(Value("string")),
        "topic": FeatureList(Value("string")),
        "difficulty": Value("string"),
        "dataset": Value("string"),
        "response": Value("string"),
        "num_tokens": Value("int32"),
        "length_words": Value("int32"),
        "judge_reply": Value("string"),
        "parse_status": Value("string"),
        "judge_attempts": Value("int32"),
        **{f"score_{aspect}": Value("int8") for aspect in ASPECTS},
        **{f"reason_{aspect}": Value("string") for aspect in ASPECTS},
        "judge": Value("string"),
    }
)


@dataclass
class JustEvalItem:
    id: int
    instruction: str
    category: str
    tasks: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    difficulty: str | None = None
    dataset: str | None = None


@dataclass
class JudgeTemplate:
    text: str
    path: str

    def render(self, instruction: str, candidate: str) -> str:
        return string.Template(self.text).safe_substitute(instruction=instruction, candidate=candidate)


@dataclass
class Judgment:
    """Scores (None where the judge wrote N/A) and reasons per aspect, and how the reply was read."""

    scores: dict[str, int | None]
    reasons: dict[str, str]


def load_just_eval(
    source: str | Path = HUB_ID, split: str = "test", limit: int | None = None, revision: str | None = None
) -> tuple[list[JustEvalItem], dict]:
    """The instructions (`id`, `instruction`, `category`; `task`/`topic` tags when present) and their provenance."""
    records = load_records(source, split=split, revision=revision)
    items = []
    for index, row in enumerate(records.rows):
        where = f"{source} row {index}"
        require_fields(row, ("instruction", "category"), where)
        if row["category"] not in CATEGORIES:
            raise ValueError(f"{where}: field 'category' must be 'regular' or 'safety', got {row['category']!r}")
        items.append(
            JustEvalItem(
                id=int(row.get("id", index)),
                instruction=str(row["instruction"]),
                category=row["category"],
                tasks=list(row.get("task") or []),
                topics=list(row.get("topic") or []),
                difficulty=row.get("difficulty"),
                dataset=row.get("dataset"),
            )
        )
    provenance = {"dataset_id": records.dataset_id, "dataset_revision": records.revision, "split": records.split}
    return select(items, limit), provenance


def select(items: Sequence[JustEvalItem], limit: int | None) -> list[JustEvalItem]:
    """The first `limit` items with the categories in their original proportions (at least one of each when
    `limit` allows).

    The release lists the 800 regular items before the 200 safety ones, so a plain prefix would never judge
    safety.
    """
    if limit is None or limit >= len(items):
        return list(items)
    by_category: dict[str, list[JustEvalItem]] = defaultdict(list)
    for item in items:
        by_category[item.category].append(item)
    shares = {c: limit * len(group) / len(items) for c, group in by_category.items()}
    floor = 1 if limit >= len(shares) else 0
    quotas = {c: max(1, round(share)) for c, share in shares.items()}
    while sum(quotas.values()) > limit:
        most_over = max((c for c in quotas if quotas[c] > floor), key=lambda c: quotas[c] - shares[c])
        quotas[most_over] -= 1
    chosen = {id(item) for c, group in by_category.items() for item in group[: quotas[c]]}
    return [item for item in items if id(item) in chosen]


def load_template(path: str | Path) -> JudgeTemplate:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judge template not found: {path}")
    text = path.read_text(encoding="utf-8")
    found = {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(text)}
    missing = [name for name in PLACEHOLDERS if name not in found]
    if missing:
        wanted = ", ".join("${" + name + "}" for name in missing)
        raise ValueError(f"judge template {path} lacks the placeholder(s) {wanted}")
    return JudgeTemplate(text, str(path))


def resolve_templates(
    path: str | Path | None = None, safety_path: str | Path | None = None
) -> dict[str, JudgeTemplate]:
    """Templates per category: the shipped ones, a folder holding `*multi*.txt` and `*safety*.txt` (like the
    Just-Eval release's `templates/`), or one file for the regular items (safety keeps its default unless
    `safety_path` is given)."""
    paths: dict[str, Path] = dict(DEFAULT_TEMPLATES)
    if path is not None and Path(path).is_dir():
        for category, pattern in TEMPLATE_PATTERNS.items():
            matches = sorted(Path(path).glob(pattern))
            if len(matches) != 1:
                raise ValueError(f"{path} must hold exactly one {pattern} judge template, found {len(matches)}")
            paths[category] = matches[0]
    elif path is not None:
        paths["regular"] = Path(path)
    if safety_path is not None:
        paths["safety"] = Path(safety_path)
    return {category: load_template(p) for category, p in paths.items()}


def reason_limit(num_aspects: int, max_new_tokens: int, cap: int = REASON_MAX_CHARS) -> int:
    """The longest reason that lets a reply with `num_aspects` entries fit in `max_new_tokens`.

    A constrained reply cut off by the token limit is invalid JSON. About 24 tokens of JSON go to each entry
    besides its reason, and a reason is counted at a conservative 3 characters per token.
    """
    budget = (max_new_tokens // max(1, num_aspects) - 24) * 3
    if budget < 10:
        raise ValueError(f"max_new_tokens={max_new_tokens} is too small for {num_aspects} judged aspects")
    return min(cap, budget)


def score_schema(aspects: Sequence[str], reason_max_chars: int = REASON_MAX_CHARS) -> dict[str, Any]:
    """`{aspect: {"reason": str, "score": 1..5}}`: every property required, the score an integer enum."""
    entry = {
        "type": "object",
        "properties": {
            "reason": {"type": "string", "maxLength": reason_max_chars},
            "score": {"type": "integer", "enum": list(SCORES)},
        },
        "required": ["reason", "score"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {aspect: entry for aspect in aspects},
        "required": list(aspects),
        "additionalProperties": False,
    }


def parse_judgment(text: str | None, aspects: Sequence[str]) -> tuple[Judgment, str] | None:
    """Scores and reasons for `aspects` and "strict" or "tolerant"; `None` when some aspect cannot be read."""
    if not text or not text.strip():
        return None
    strict = _strict(strict_json(text), aspects)
    if strict is not None:
        return strict, "strict"
    for value in json_values(text):
        judgment = _from_mapping(value, aspects)
        if judgment is not None:
            return judgment, "tolerant"
    judgment = _from_lines(text, aspects)
    return (judgment, "tolerant") if judgment is not None else None


def as_score(value: Any) -> int | None | str:
    """1..5 from an int, integral float or text ("4", "4/5", "4.0"); "n/a" for N/A; `None` when unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = value.strip().strip("\"'*[]").strip()
        if text.lower() in _NOT_APPLICABLE:
            return "n/a"
        match = re.fullmatch(r"(\d+)(?:\.0+)?\s*(?:/\s*5|out of 5)?", text, re.IGNORECASE)
        if not match:
            return None
        value = int(match.group(1))
    if isinstance(value, int) and value in SCORES:
        return value
    return None


def _strict(value: Any, aspects: Sequence[str]) -> Judgment | None:
    if not isinstance(value, dict) or set(value) != set(aspects):
        return None
    scores, reasons = {}, {}
    for aspect in aspects:
        entry = value[aspect]
        if not isinstance(entry, dict) or set(entry) != {"reason", "score"}:
            return None
        if type(entry["score"]) is not int or entry["score"] not in SCORES or not isinstance(entry["reason"], str):
            return None
        scores[aspect], reasons[aspect] = entry["score"], entry["reason"]
    return Judgment(scores, reasons)


def _from_mapping(value: Any, aspects: Sequence[str], depth: int = 0) -> Judgment | None:
    if not isinstance(value, dict) or depth > 2:
        return None
    by_key = {str(key).strip().strip("*").strip().lower(): entry for key, entry in value.items()}
    if not any(aspect in by_key for aspect in aspects):
        for inner in value.values():
            judgment = _from_mapping(inner, aspects, depth + 1)
            if judgment is not None:
                return judgment
        return None
    scores, reasons = {}, {}
    for aspect in aspects:
        if aspect not in by_key:
            return None
        entry = by_key[aspect]
        if isinstance(entry, dict):
            fields = {str(k).strip().lower(): v for k, v in entry.items()}
            score = next((as_score(fields[k]) for k in _SCORE_KEYS if k in fields), None)
            reason = next((fields[k] for k in _REASON_KEYS if k in fields), "")
        else:
            score, reason = as_score(entry), ""
        if score is None:
            return None
        scores[aspect] = None if score == "n/a" else score
        reasons[aspect] = reason if isinstance(reason, str) else str(reason)
    return Judgment(scores, reasons)


def _from_lines(text: str, aspects: Sequence[str]) -> Judgment | None:
    """`Helpfulness: 4`, `**Depth** - 3/5: reason`, one aspect per line; the last mention of an aspect wins."""
    scores, reasons = {}, {}
    for aspect in aspects:
        pattern = re.compile(
            rf"^[\s>*#\-\d.)]*\**{aspect}\**\s*(?:score)?\s*[:=\-–]\s*\**\s*(?P<score>\d(?:\.0+)?(?:\s*/\s*5)?|N/?A)\b"
            r"\**(?P<rest>.*)$",
            re.IGNORECASE | re.MULTILINE,
        )
        matches = list(pattern.finditer(text))
        if not matches:
            return None
        score = as_score(matches[-1].group("score"))
        if score is None:
            return None
        scores[aspect] = None if score == "n/a" else score
        reasons[aspect] = matches[-1].group("rest").strip().lstrip(":-–—.,;)* ").strip()
    return Judgment(scores, reasons)


def judge_messages(template: JudgeTemplate, instruction: str, candidate: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": template.render(instruction, candidate)}]


def answer_requests(items: Sequence[JustEvalItem]) -> list[GenerationRequest]:
    return [GenerationRequest([{"role": "user", "content": item.instruction}]) for item in items]


def run_just_eval(
    policy: GenerationBackend,
    judge: GenerationBackend,
    items: Sequence[JustEvalItem],
    templates: dict[str, JudgeTemplate] | None = None,
    provenance: dict | None = None,
    params: SamplingParams = POLICY_PARAMS,
    judge_max_new_tokens: int = JUDGE_MAX_NEW_TOKENS,
    reason_max_chars: int | None = None,
    retries: int = 1,
) -> TaskOutcome:
    """Answer every instruction, have the judge score each answer, and aggregate (see the module docstring)."""
    templates = templates or resolve_templates()
    answers = [outputs[0] for outputs in policy.generate(answer_requests(items), params, desc="just-eval answers")]
    judge_name = judge_identity(judge)
    judge_params = replace(JUDGE_PARAMS, max_new_tokens=judge_max_new_tokens)
    rows: list[dict] = []
    for category, aspects in CATEGORIES.items():
        chosen = [(item, answer) for item, answer in zip(items, answers, strict=True) if item.category == category]
        if not chosen:
            continue
        limit = reason_max_chars or reason_limit(len(aspects), judge_max_new_tokens)
        schema = score_schema(aspects, limit)
        judge_requests = [
            GenerationRequest(judge_messages(templates[category], item.instruction, answer.text), json_schema=schema)
            for item, answer in chosen
        ]
        replies = ask_judge(
            judge,
            judge_requests,
            lambda text, a=aspects: parse_judgment(text, a),
            judge_params,
            retries,
            f"just-eval {category} judge",
        )
        for (item, answer), reply in zip(chosen, replies, strict=True):
            rows.append(_row(item, answer, reply, judge_name))
    rows.sort(key=lambda row: row["id"])
    breakdown = summarize_rows(rows)
    results = just_eval_results(rows, judge_name, provenance)
    return TaskOutcome(results, {"items": (rows, ITEM_FEATURES)}, {"breakdown.json": breakdown})


def _row(item: JustEvalItem, answer, reply, judge_name: str) -> dict:
    judgment: Judgment | None = reply.value
    row = {
        "id": item.id,
        "instruction": item.instruction,
        "category": item.category,
        "task": item.tasks,
        "topic": item.topics,
        "difficulty": item.difficulty,
        "dataset": item.dataset,
        "response": answer.text,
        "num_tokens": answer.num_tokens,
        "length_words": len(answer.text.split()),
        "judge_reply": reply.text,
        "parse_status": reply.status,
        "judge_attempts": reply.attempts,
        "judge": judge_name,
    }
    for aspect in ASPECTS:
        row[f"score_{aspect}"] = judgment.scores.get(aspect) if judgment else None
        row[f"reason_{aspect}"] = judgment.reasons.get(aspect) if judgment else None
    return row


def _aspect_means(rows: Sequence[dict]) -> dict[str, float]:
    means = {}
    for aspect in ASPECTS:
        values = [row[f"score_{aspect}"] for row in rows if row.get(f"score_{aspect}") is not None]
        if values:
            means[aspect] = fmean(values)
    return means


def _group_summary(rows: Sequence[dict]) -> dict[str, Any]:
    means = _aspect_means(rows)
    return {
        "n": len(rows),
        **means,
        "average": fmean(means.values()) if means else None,
        "length_words": fmean(row["length_words"] for row in rows) if rows else None,
        "length_tokens": fmean(row["num_tokens"] for row in rows) if rows else None,
    }


def summarize_rows(rows: Sequence[dict]) -> dict[str, Any]:
    """Overall, per category and per task tag: aspect means, their average, answer length; and parse counts."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    by_category: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_category[row["category"]].append(row)
        for tag in row.get("task") or []:
            by_task[tag].append(row)
    return {
        "overall": _group_summary(rows),
        "by_category": {c: _group_summary(group) for c, group in sorted(by_category.items())},
        "by_task": {tag: _group_summary(group) for tag, group in sorted(by_task.items())},
        "parse_status": dict(Counter(row["parse_status"] for row in rows)),
    }


def just_eval_results(rows: Sequence[dict], judge: str, provenance: dict | None = None) -> list[TaskResult]:
    """Aspect means with 95 % intervals, their average, answer lengths and the judge's parse-failure rate."""
    provenance = provenance or {}
    results = []
    means = _aspect_means(rows)
    for aspect, mean in means.items():
        values = [row[f"score_{aspect}"] for row in rows if row.get(f"score_{aspect}") is not None]
        low, high = mean_interval(values) or (None, None)
        results.append(TaskResult(TASK, aspect, mean, len(values), low, high, judge, **provenance))
    if means:
        judged = sum(row["parse_status"] != "failed" for row in rows)
        results.append(TaskResult(TASK, "average", fmean(means.values()), judged, judge=judge, **provenance))
    if rows:
        for metric, key in (("length_words", "length_words"), ("length_tokens", "num_tokens")):
            values = [row[key] for row in rows]
            low, high = mean_interval(values) or (None, None)
            results.append(TaskResult(TASK, metric, fmean(values), len(values), low, high, **provenance))
        failed = sum(row["parse_status"] == "failed" for row in rows)
        low, high = wilson_interval(failed, len(rows))
        results.append(
            TaskResult(
                TASK,
                "judge_parse_failure_rate",
                100 * failed / len(rows),
                len(rows),
                100 * low,
                100 * high,
                judge,
                **provenance,
            )
        )
    return results


def format_breakdown(breakdown: dict[str, Any]) -> str:
    """Plain-text tables: aspects by category and overall, then per task tag, each with answer length."""
    columns = [*ASPECTS, "average", "length_words"]
    labels = [*ASPECTS, "average", "words"]
    header = f"{'':<16}{'n':>6}" + "".join(f"{label[:11]:>12}" for label in labels)

    def line(name: str, group: dict) -> str:
        cells = "".join(f"{group[c]:>12.2f}" if group.get(c) is not None else f"{'-':>12}" for c in columns)
        return f"{name[:16]:<16}{group['n']:>6}" + cells

    lines = ["Just-Eval scores (1-5) and answer length (words)", header]
    lines += [line(name, group) for name, group in breakdown["by_category"].items()]
    lines.append(line("overall", breakdown["overall"]))
    if breakdown["by_task"]:
        lines += ["", "by task tag (regular items)", header]
        lines += [line(tag, group) for tag, group in breakdown["by_task"].items()]
    status = ", ".join(f"{k} {v}" for k, v in sorted(breakdown["parse_status"].items()))
    lines += ["", f"judge replies: {status}"]
    return "\n".join(lines)
