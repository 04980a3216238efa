"""Rule-based feedback for math: compare the response's final number with the reference answer.

A small judge rates math answers close to chance; the final number of a GSM8K answer can be checked
exactly. Numbers are compared as exact fractions, so `1,200`, `$1200.00` and `1200` are the same answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

VERIFIER_NAME = "verifier:final-number"
VERIFIED_ASPECT = "Logical Correctness"

_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-−]?)(?:[$€£¥₹]\s?)?(?P<sign2>-?)(?P<int>\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s?/\s?(?P<den>\d+)(?![\d.]))?"
)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_HASHES = re.compile(r"####\s*(?P<tail>[^\n]*)")
_MARKER = re.compile(r"\banswer\s*(?:is\b|:|=|would\s+be\b|will\s+be\b|equals\b)\s*:?", re.IGNORECASE)
_FRAC = re.compile(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}")


@dataclass(frozen=True)
class Verdict:
    rating: int
    critique: str


def extract_final_number(text: str | None) -> str | None:
    """The answer's final number in a canonical form (`"42"`, `"0.5"`, `"3/7"`), or `None` if there is none.

    Precedence: a `#### N` line, then the last `\\boxed{N}`, then the number after the last answer marker
    ("the answer is", "Answer:"), then the last number of the text.
    """
    if not text:
        return None
    text = _clean(text)
    hashes = list(_HASHES.finditer(text))
    if hashes:
        number = _first_number(hashes[-1].group("tail"))
        if number is not None:
            return number
    boxed = _last_boxed(text)
    if boxed is not None:
        number = _first_number(boxed)
        if number is not None:
            return number
    markers = list(_MARKER.finditer(text))
    if markers:
        number = _number_in_statement(text[markers[-1].end() :])
        if number is not None:
            return number
    numbers = [_canonical(m) for m in _NUMBER.finditer(text)]
    return numbers[-1] if numbers else None


def reference_number(solution: str | None) -> str | None:
    """The reference answer of a solution: its `#### N` line (GSM8K), a `\\boxed{}` or an answer marker.

    Unlike `extract_final_number`, the last number of free text is not taken: a reference without a marked
    answer is not trusted to be a number, and the row goes to the judge instead.
    """
    if not solution:
        return None
    text = _clean(solution)
    if re.fullmatch(r"\s*" + _NUMBER.pattern + r"\s*", text):
        return _canonical(_NUMBER.search(text))
    if _HASHES.search(text) or _last_boxed(text) is not None or _MARKER.search(text):
        return extract_final_number(solution)
    return None


def verify_math(response: str, reference: str) -> Verdict:
    """Logical Correctness 1 when the response's final number equals the reference answer, else -1."""
    expected = reference_number(reference)
    if expected is None:
        raise ValueError("the reference has no final number to verify against")
    given = extract_final_number(response)
    if given is None:
        return Verdict(-1, f"The response does not state a final numeric answer; the correct answer is {expected}.")
    if _value(given) == _value(expected):
        return Verdict(1, f"The final answer {given} is correct.")
    return Verdict(-1, f"The final answer {given} is wrong; the correct answer is {expected}.")


def numbers_equal(a: str, b: str) -> bool:
    return _value(a) == _value(b)


def _clean(text: str) -> str:
    text = _FRAC.sub(r"(\1)/(\2)", text)
    text = text.replace("\\$", "$").replace("{,}", ",").replace("\\!", "").replace("\\,", "")
    text = re.sub(r"\((\d+)\)/\((\d+)\)", r"\1/\2", text)
    return _THOUSANDS.sub("", text)


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def _first_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    return _canonical(match) if match else None


def _number_in_statement(text: str) -> str | None:
    """The number a statement after an answer marker gives: after its last `=` if it shows a calculation."""
    statement = re.split(r"\n|\.(?:\s|$)", text, maxsplit=1)[0]
    if "=" in statement:
        after = _first_number(statement.rsplit("=", 1)[1])
        if after is not None:
            return after
    return _first_number(statement) or _first_number(text)


def _canonical(match: re.Match) -> str:
    value = Fraction(match.group("int"))
    if match.group("den") and int(match.group("den")) != 0:
        value /= int(match.group("den"))
    if match.group("sign") or match.group("sign2"):
        value = -value
    return _format(value)


def _format(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    if denominator != 1:
        return f"{value.numerator}/{value.denominator}"
    text = f"{float(value):.12f}".rstrip("0").rstrip(".")
    return text if Fraction(text) == value else f"{value.numerator}/{value.denominator}"


def _value(number: str) -> Fraction:
    return Fraction(number)
