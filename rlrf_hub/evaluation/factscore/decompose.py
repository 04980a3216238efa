"""Breaking a biography into atomic facts with an LLM, one sentence at a time.

Each sentence is sent to the judge with a few worked examples and answered as `{"facts": [...]}` under a
JSON schema. The examples are either two written for this project or, when the user gives a path (such
as FActScore's `demos/` folder: JSON files `{sentence: [fact, ...]}`, or text files with a sentence line
followed by `- fact` lines), those closest to the sentence by BM25.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..judging import json_values, strict_json
from .bm25 import BM25

# In the human-labelled FActScore data 96% of sentences hold at most 8 atomic facts; a small judge that is made to
# name at least one fills whatever room it gets, and every fact it lists costs one support check.
MAX_FACTS_PER_SENTENCE = 8
FACT_MAX_CHARS = 200
NUM_DEMOS = 4

DECOMPOSE_TEMPLATE = """\
Break a sentence from a biography of {topic} into atomic facts. An atomic fact is a short, complete \
sentence that states exactly one piece of information. Together the facts must cover everything the \
sentence claims, and they must not add anything it does not claim. A sentence that claims nothing (a \
greeting, a remark about the question) has no facts.

{demos}Sentence: {sentence}
Reply with JSON only, in the form {{"facts": ["...", "..."]}}."""

BUILTIN_DEMOS: list[tuple[str, list[str]]] = [
    (
        "Born in 1931 in Lyon, Marie Vautrin was a French violinist who taught at the Paris Conservatory "
        "for two decades.",
        [
            "Marie Vautrin was born in 1931.",
            "Marie Vautrin was born in Lyon.",
            "Marie Vautrin was French.",
            "Marie Vautrin was a violinist.",
            "Marie Vautrin taught at the Paris Conservatory.",
            "Marie Vautrin taught at the Paris Conservatory for two decades.",
        ],
    ),
    (
        "After retiring from cycling, he opened a bakery in his hometown and wrote two memoirs.",
        [
            "He retired from cycling.",
            "He opened a bakery after retiring from cycling.",
            "He opened a bakery in his hometown.",
            "He wrote two memoirs.",
        ],
    ),
    ("I hope this short overview answers your question!", []),
]

_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "gen", "col", "lt", "capt", "sgt", "rev", "hon", "gov",
    "sen", "rep", "mt", "ft", "inc", "ltd", "co", "corp", "vs", "etc", "no", "jan", "feb", "mar", "apr", "jun",
    "jul", "aug", "sep", "sept", "oct", "nov", "dec", "u.s", "u.k", "e.g", "i.e", "ca", "approx", "b", "d",
}  # fmt: skip
_CUT_LIST = re.compile(r'"facts"\s*:\s*\[(.*)\Z', re.DOTALL)
_JSON_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"\s*(?=,|\Z)')
_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*(?:\[\d+\])*\s+")


_NO_CLAIM = re.compile(
    r"^(?:sure|certainly|of course|absolutely|okay|ok|hello|hi)\W*$"
    r"|^(?:i hope|hope this|let me know|feel free|if you have any|is there anything|thank you|thanks(?! to))\b",
    re.IGNORECASE,
)


@dataclass
class Demo:
    sentence: str
    facts: list[str]


def split_sentences(text: str) -> list[str]:
    """Sentences of an answer: lines first (lists, paragraphs), then `. ! ?` boundaries.

    A period after a known abbreviation ("Dr.", "Jan.", "U.S.") or a single capital initial ("J. R. R.")
    does not end a sentence, nor does one followed by a lower-case word.
    """
    sentences = []
    for line in text.splitlines():
        line = line.strip().lstrip("-*• ").strip()
        start = 0
        for boundary in _BOUNDARY.finditer(line):
            head = line[start : boundary.start() + 1]
            following = line[boundary.end() : boundary.end() + 1]
            last_word = head.rsplit(None, 1)[-1].rstrip(".").lower() if head.split() else ""
            if line[boundary.start()] == "." and (
                last_word in _ABBREVIATIONS or re.fullmatch(r"[a-z]", last_word) or following.islower()
            ):
                continue
            sentences.append(line[start : boundary.end()].strip())
            start = boundary.end()
        if line[start:].strip():
            sentences.append(line[start:].strip())
    return sentences


def states_nothing(sentence: str) -> bool:
    """A sentence that makes no claim to check, by rule: an interjection ("Sure!"), a question, an introduction to
    what follows (ending in a colon), or a closing offer ("I hope this helps", "Let me know ..."). These are not
    sent to the judge, which is then asked for at least one fact for every other sentence."""
    text = sentence.strip()
    return not text or text.endswith(("?", ":")) or _NO_CLAIM.search(text) is not None


def load_demos(path: str | Path) -> list[Demo]:
    """Worked examples from a JSON file `{sentence: [fact, ...]}`, a text file, or a folder of either."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json")) or sorted(path.glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"{path} holds no .json or .txt demonstration file")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"demonstrations not found: {path}")
    demos: dict[str, list[str]] = {}
    for file in files:
        for demo in _read_demo_file(file):
            demos.setdefault(demo.sentence, demo.facts)
    return [Demo(sentence, facts) for sentence, facts in demos.items()]


def _read_demo_file(path: Path) -> list[Demo]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise ValueError(f"{path} must hold a JSON object {{sentence: [fact, ...]}}")
        return [Demo(sentence, [str(fact) for fact in facts]) for sentence, facts in data.items()]
    demos = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        facts = [line[1:].strip() for line in lines[1:] if line.startswith("-")]
        if lines and not lines[0].startswith("-") and facts:
            demos.append(Demo(lines[0], facts))
    if not demos:
        raise ValueError(f"{path} holds no demonstrations (a sentence line followed by '- fact' lines)")
    return demos


def facts_schema(
    max_facts: int = MAX_FACTS_PER_SENTENCE, max_chars: int = FACT_MAX_CHARS, min_facts: int = 0
) -> dict[str, Any]:
    """`{"facts": [str, ...]}`; `min_facts=1` keeps a judge that likes empty lists from skipping every sentence."""
    return {
        "type": "object",
        "properties": {
            "facts": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": max_chars},
                "minItems": min_facts,
                "maxItems": max_facts,
            }
        },
        "required": ["facts"],
        "additionalProperties": False,
    }


def parse_facts(text: str) -> tuple[list[str], str] | None:
    """The facts of a reply: strict `{"facts": [str]}`, else any JSON list of strings, else the complete strings of
    a facts list cut off by the token limit, else `- fact` lines."""
    value = strict_json(text)
    if isinstance(value, dict) and set(value) == {"facts"} and _strings(value["facts"]):
        return [fact.strip() for fact in value["facts"] if fact.strip()], "strict"
    for value in json_values(text):
        if isinstance(value, dict):
            value = next((v for k, v in value.items() if str(k).lower() in ("facts", "atomic_facts")), None)
        if _strings(value):
            return [fact.strip() for fact in value if fact.strip()], "tolerant"
    cut = _CUT_LIST.search(text)
    if cut:
        facts = [json.loads(f'"{item}"').strip() for item in _JSON_STRING.findall(cut.group(1))]
        if any(facts):
            return [fact for fact in facts if fact], "tolerant"
    lines = [m.group(1).strip() for m in re.finditer(r"^\s*(?:[-*•]|\d+[.)])\s+(.+)$", text, re.MULTILINE)]
    return (lines, "tolerant") if lines else None


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


class FactDecomposer:
    """Builds the judge's decomposition prompts; examples are picked per sentence by BM25 when there are many."""

    def __init__(self, demos: Sequence[Demo] | None = None, num_demos: int = NUM_DEMOS):
        self.demos = list(demos) if demos else [Demo(s, f) for s, f in BUILTIN_DEMOS]
        self.num_demos = num_demos
        self._bm25 = BM25([demo.sentence for demo in self.demos])

    def examples_for(self, sentence: str) -> list[Demo]:
        if len(self.demos) <= self.num_demos:
            return self.demos
        return [self.demos[i] for i in sorted(self._bm25.top_k(sentence, self.num_demos))]

    def messages(self, topic: str, sentence: str, allow_empty: bool = True) -> list[dict[str, str]]:
        """The judge's prompt; without `allow_empty` (the schema asks for at least one fact) the examples without
        facts are left out, so the prompt does not show what the schema forbids."""
        demos = "".join(
            f"Sentence: {demo.sentence}\n{json.dumps({'facts': demo.facts}, ensure_ascii=False)}\n\n"
            for demo in self.examples_for(sentence)
            if demo.facts or allow_empty
        )
        content = DECOMPOSE_TEMPLATE.format(topic=topic, demos=demos, sentence=sentence)
        return [{"role": "user", "content": content}]
