"""Stable row identifiers, so stages join across datasets and a resumed run recognises its rows."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_SPACE = re.compile(r"\s+")


def normalise_prompt(text: str) -> str:
    """Unicode NFKC, whitespace collapsed, ends stripped: cosmetic differences give the same prompt id."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def prompt_id(text: str) -> str:
    return "p-" + hashlib.sha256(normalise_prompt(text).encode("utf-8")).hexdigest()[:16]


def response_id(prompt: str, iteration: int, origin: str, index: int) -> str:
    """`<prompt_id>-i<iteration>-<c|r><index>`: candidate or refinement `index` of a prompt in an iteration."""
    if origin not in ("candidate", "refinement"):
        raise ValueError(f"origin must be 'candidate' or 'refinement', got {origin!r}")
    return f"{prompt}-i{iteration}-{origin[0]}{index}"
