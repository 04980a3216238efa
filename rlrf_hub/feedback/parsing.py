"""Reading the judge's replies.

A reply that is exactly the contract JSON (see `templates.rating_schema`) parses as `strict`. Judges that
were not constrained get a second, tolerant reading: JSON wrapped in text or code fences, aspect names in
another case or in snake_case, ratings written as strings ("+1"), the trailing `{"Aspect": rating}` dict of
the paper's feedback format, or plain `Aspect: rating` lines. What is never guessed: a rating outside
{-1, 0, 1} or an aspect that is missing makes the reply unreadable (`None`), and the caller retries.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..aspects import ASPECT_NAMES, RATINGS
from .templates import CRITIQUE_MAX_CHARS

PREAMBLE_MAX_CHARS = 1000
_RATING_KEYS = ("rating", "score", "grade", "value")
_CRITIQUE_KEYS = ("critique", "feedback", "explanation", "rationale", "reason", "reasoning", "comment")
_BY_LOWER = {name.lower(): name for name in ASPECT_NAMES}
_NUMBER = r"[+-]?\d+(?:\.\d+)?"
_FENCE = re.compile(r"```[a-zA-Z]*")
_ANY_ASPECT = re.compile(
    r"\b(?:" + "|".join(r"[\s_\-]+".join(re.escape(w) for w in name.split()) for name in ASPECT_NAMES) + r")\b",
    re.IGNORECASE,
)


@dataclass
class ParsedRatings:
    aspects: list[str]
    ratings: list[int]
    critiques: list[str]
    status: str  # "strict" or "tolerant"


def parse_ratings(
    text: str | None, aspects: Sequence[str], max_critique_chars: int = CRITIQUE_MAX_CHARS
) -> ParsedRatings | None:
    """Read one rating and critique per aspect from a judge reply; `None` when that cannot be done safely."""
    if not text or not text.strip():
        return None
    aspects = list(aspects)
    return _strict_ratings(text, aspects, max_critique_chars) or _tolerant_ratings(text, aspects)


def parse_selection(text: str | None, k: int) -> list[str] | None:
    """Read the `k` aspects the judge picked, most important first; `None` when fewer than `k` distinct ones."""
    if not text or not text.strip():
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and set(obj) == {"aspects"} and isinstance(obj["aspects"], list):
        names = obj["aspects"]
        if len(names) == k and len(set(names)) == k and all(n in ASPECT_NAMES for n in names):
            return list(names)
    for value in json_values(text):
        for names in _string_lists(value):
            picked = _distinct_aspects(names)
            if len(picked) >= k:
                return picked[:k]
    mentioned = _distinct_aspects(m.group(0) for m in _ANY_ASPECT.finditer(text))
    return mentioned if len(mentioned) == k else None


def as_rating(value: Any) -> int | None:
    """-1, 0 or 1 from an int, an integral float or a string such as "+1"; `None` for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = value.strip().strip("\"'")
        if not re.fullmatch(r"[+-]?\d+(?:\.0+)?", text):
            return None
        value = int(float(text))
    if isinstance(value, int) and value in RATINGS:
        return value
    return None


def canonical_aspect(key: Any) -> str | None:
    """The aspect a key names, ignoring case, markup and `_`/`-` separators; `None` if it names none."""
    if not isinstance(key, str):
        return None
    text = re.sub(r"[\s_\-]+", " ", key.strip().strip("*\"'`#: ")).lower()
    return _BY_LOWER.get(text)


def _strict_ratings(text: str, aspects: list[str], max_critique_chars: int) -> ParsedRatings | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or set(obj) != set(aspects) or len(obj) != len(aspects):
        return None
    ratings, critiques = [], []
    for aspect in aspects:
        entry = obj[aspect]
        if not isinstance(entry, dict) or set(entry) != {"critique", "rating"}:
            return None
        rating, critique = entry["rating"], entry["critique"]
        if type(rating) is not int or rating not in RATINGS:
            return None
        if not isinstance(critique, str) or len(critique) > max_critique_chars:
            return None
        ratings.append(rating)
        critiques.append(critique)
    return ParsedRatings(aspects, ratings, critiques, "strict")


def _tolerant_ratings(text: str, aspects: list[str]) -> ParsedRatings | None:
    spans = list(_json_spans(text))
    for start, span in reversed(spans):
        value = _load(span)
        if value is None:
            continue
        preamble = _FENCE.sub("", text[:start]).strip()
        parsed = _from_mapping(value, aspects, preamble)
        if parsed is not None:
            return parsed
    return _from_lines(text, aspects)


def _from_mapping(value: Any, aspects: list[str], preamble: str, depth: int = 0) -> ParsedRatings | None:
    if not isinstance(value, dict) or depth > 2:
        return None
    by_aspect = {canonical_aspect(k): v for k, v in value.items() if canonical_aspect(k)}
    if not by_aspect:
        split = _split_ratings_and_critiques(value)
        if split is not None:
            return _from_mapping(split, aspects, preamble, depth + 1)
        for inner in value.values():
            parsed = _from_mapping(inner, aspects, preamble, depth + 1)
            if parsed is not None:
                return parsed
        return None
    ratings, critiques = [], []
    for aspect in aspects:
        if aspect not in by_aspect:
            return None
        entry = by_aspect[aspect]
        if isinstance(entry, dict):
            fields = {str(k).strip().lower(): v for k, v in entry.items()}
            rating = next((as_rating(fields[k]) for k in _RATING_KEYS if k in fields), None)
            critique = next((fields[k] for k in _CRITIQUE_KEYS if k in fields), "")
        else:
            rating, critique = as_rating(entry), _preamble_critique(preamble, aspect, len(aspects))
        if rating is None:
            return None
        ratings.append(rating)
        critiques.append(critique if isinstance(critique, str) else json.dumps(critique))
    return ParsedRatings(aspects, ratings, critiques, "tolerant")


def _split_ratings_and_critiques(value: dict) -> dict | None:
    """`{"ratings": {A: r}, "critiques": {A: c}}` -> `{A: {"rating": r, "critique": c}}`."""
    fields = {str(k).strip().lower(): v for k, v in value.items()}
    ratings = next((fields[k] for k in ("ratings", "scores") if isinstance(fields.get(k), dict)), None)
    critiques = next((fields[k] for k in ("critiques", "feedback") if isinstance(fields.get(k), dict)), None)
    if ratings is None or critiques is None:
        return None
    return {k: {"rating": v, "critique": critiques.get(k, "")} for k, v in ratings.items()}


def _from_lines(text: str, aspects: list[str]) -> ParsedRatings | None:
    """`Aspect: 1 ...`, `**Aspect** = -1`, `Aspect (0): critique`, one aspect per line."""
    ratings, critiques = [], []
    for aspect in aspects:
        name = r"[\s_\-]+".join(re.escape(word) for word in aspect.split())
        pattern = re.compile(
            rf"^[\s>*#\-\d.)]*\**\s*{name}\s*\**\s*"
            rf"(?:\(\s*(?P<paren>{_NUMBER})\s*\)|[:=]\s*\**\s*(?:(?:rating|score)\s*[:=]?\s*)?(?P<plain>{_NUMBER}))"
            r"(?![\d/])\**(?P<rest>.*)$",
            re.IGNORECASE | re.MULTILINE,
        )
        matches = list(pattern.finditer(text))
        if not matches:
            return None
        last = matches[-1]
        rating = as_rating(last.group("paren") or last.group("plain"))
        if rating is None:
            return None
        ratings.append(rating)
        critiques.append(last.group("rest").strip().lstrip(":-–—.,;)* ").strip())
    return ParsedRatings(aspects, ratings, critiques, "tolerant")


def _preamble_critique(preamble: str, aspect: str, num_aspects: int) -> str:
    """The critique of a paper-style reply (free text, then `{aspect: rating}`): the lines about `aspect`."""
    if num_aspects > 1:
        lines = [line.strip() for line in preamble.splitlines() if _aspect_in(line) == aspect]
        if lines:
            preamble = " ".join(lines)
    preamble = " ".join(preamble.split())
    return preamble[:PREAMBLE_MAX_CHARS]


def _aspect_in(line: str) -> str | None:
    match = _ANY_ASPECT.search(line)
    return canonical_aspect(match.group(0)) if match else None


def _distinct_aspects(names) -> list[str]:
    picked: list[str] = []
    for name in names:
        aspect = canonical_aspect(name)
        if aspect and aspect not in picked:
            picked.append(aspect)
    return picked


def _string_lists(value: Any) -> Iterator[list]:
    if isinstance(value, list):
        yield value
    elif isinstance(value, dict):
        for inner in value.values():
            yield from _string_lists(inner)


def json_values(text: str) -> Iterator[Any]:
    """Every balanced `{...}`/`[...]` span of a reply that reads as JSON or a Python literal, in order."""
    for _, span in _json_spans(text):
        value = _load(span)
        if value is not None:
            yield value


def _json_spans(text: str) -> Iterator[tuple[int, str]]:
    """Balanced `{...}`/`[...]` spans, outermost first; an unbalanced opener is skipped, so inner spans still count."""
    i = 0
    while i < len(text):
        if text[i] in "{[":
            end = _matching_close(text, i)
            if end is not None:
                yield i, text[i : end + 1]
                i = end + 1
                continue
        i += 1


def _matching_close(text: str, start: int) -> int | None:
    stack, in_string, escaped = [], False, False
    pairs = {"{": "}", "[": "]"}
    for j in range(start, len(text)):
        ch = text[j]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in pairs:
            stack.append(pairs[ch])
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return j
    return None


def _load(span: str) -> Any:
    """JSON, JSON with trailing commas, or a Python literal (single-quoted keys)."""
    for candidate in (span, re.sub(r",\s*([}\]])", r"\1", span)):
        try:
            return json.loads(candidate)
        except ValueError:
            pass
    try:
        return ast.literal_eval(span)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
