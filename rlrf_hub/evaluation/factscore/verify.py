"""Checking one atomic fact against retrieved passages with an LLM judge answering `{"supported": true|false}`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..judging import json_values, strict_json
from .knowledge import Passage

VERIFY_TEMPLATE = """\
Below are passages about {topic} from a reference source, followed by a statement about {topic}.

{passages}
Statement: {fact}

Does the reference text support the statement? Answer true only when the passages state it or it follows \
directly from them; answer false when they contradict it, say nothing about it, or support only part of \
it. Reply with JSON only: {{"supported": true}} or {{"supported": false}}."""

NO_PASSAGES = "(The reference source has no text about this person.)\n"
SUPPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"supported": {"type": "boolean"}},
    "required": ["supported"],
    "additionalProperties": False,
}
_WORD_VERDICT = re.compile(r"\b(not supported|unsupported|supported|true|false|yes|no)\b", re.IGNORECASE)
_POSITIVE = {"supported", "true", "yes"}


def verify_messages(topic: str, fact: str, passages: Sequence[Passage]) -> list[dict[str, str]]:
    block = "".join(f"Title: {p.title}\nText: {p.text}\n\n" for p in passages) or NO_PASSAGES
    return [{"role": "user", "content": VERIFY_TEMPLATE.format(topic=topic, passages=block, fact=fact)}]


def parse_support(text: str) -> tuple[bool, str] | None:
    """`{"supported": bool}` strictly; else such a key in any JSON of the reply; else the first verdict word."""
    value = strict_json(text)
    if isinstance(value, dict) and set(value) == {"supported"} and isinstance(value["supported"], bool):
        return value["supported"], "strict"
    for value in json_values(text):
        if isinstance(value, dict):
            verdict = _as_bool(next((v for k, v in value.items() if str(k).lower() == "supported"), None))
            if verdict is not None:
                return verdict, "tolerant"
    match = _WORD_VERDICT.search(text)
    if match:
        return match.group(1).lower() in _POSITIVE, "tolerant"
    return None


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
        return value.strip().lower() in ("true", "yes")
    return None
