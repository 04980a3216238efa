"""FactScore from per-fact decisions, its length-penalised variant, and the human labels of the FActScore release.

Counting rule (the one that reproduces the published human FactScores). A response's score is the number
of its atomic facts judged supported over the number of all its atomic facts. In the human labels that
means `S` over `S + NS + IR`: a fact annotators marked irrelevant (IR) stays in the denominator and counts as
not supported. Responses that abstain are not scored: they are counted and reported as the abstention rate.
Responses that carry no atomic fact at all are not scored either (in the human labels, these are answers
whose every sentence was marked irrelevant, i.e. biographies of a different person). FactScore is the mean
of the response scores. On the labelled release this gives ChatGPT 58.30 (157 responses), InstructGPT 42.81
(181) and PerplexityAI 80.38 (158); counting IR facts as supported would give 67.9 / 56.3 / 86.0, and leaving
them out 62.3 / 47.4 / 84.0.

Length penalty (as in the original implementation, gamma = 10): a response with n < gamma facts has its
score multiplied by exp(1 - gamma / n), so a very short answer cannot reach a high score by saying little.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..stats import mean_interval

GAMMA = 10
HUMAN_SUPPORTED = "S"
HUMAN_LABELS = ("S", "NS", "IR")


@dataclass
class ResponseFacts:
    """One answer's facts and their verdicts (True = supported); `abstained` answers have none."""

    topic: str
    abstained: bool
    decisions: list[bool] = field(default_factory=list)


@dataclass
class FactScoreSummary:
    """Percentages over the scored responses (answered, with at least one fact), plus the counts behind them."""

    factscore: float | None
    factscore_length_penalized: float | None
    num_responses: int
    num_scored: int
    num_abstained: int
    num_without_facts: int
    num_facts: int
    ci: tuple[float, float] | None = None
    length_penalized_ci: tuple[float, float] | None = None

    @property
    def abstention_rate(self) -> float:
        return 100 * self.num_abstained / self.num_responses if self.num_responses else 0.0

    @property
    def facts_per_response(self) -> float | None:
        return self.num_facts / self.num_scored if self.num_scored else None


def length_penalty(num_facts: int, gamma: float = GAMMA) -> float:
    """exp(1 - gamma / n) for 0 < n < gamma, else 1 (no penalty when gamma is 0)."""
    if gamma and 0 < num_facts < gamma:
        return math.exp(1 - gamma / num_facts)
    return 1.0


def response_score(decisions: Sequence[bool]) -> float | None:
    """Supported facts over all facts, or `None` for a response without facts."""
    return sum(decisions) / len(decisions) if decisions else None


def summarize(responses: Sequence[ResponseFacts], gamma: float = GAMMA) -> FactScoreSummary:
    scores, penalized = [], []
    abstained = without_facts = num_facts = 0
    for response in responses:
        if response.abstained:
            abstained += 1
            continue
        score = response_score(response.decisions)
        if score is None:
            without_facts += 1
            continue
        num_facts += len(response.decisions)
        scores.append(100 * score)
        penalized.append(100 * score * length_penalty(len(response.decisions), gamma))
    return FactScoreSummary(
        factscore=sum(scores) / len(scores) if scores else None,
        factscore_length_penalized=sum(penalized) / len(penalized) if penalized else None,
        num_responses=len(responses),
        num_scored=len(scores),
        num_abstained=abstained,
        num_without_facts=without_facts,
        num_facts=num_facts,
        ci=mean_interval(scores),
        length_penalized_ci=mean_interval(penalized),
    )


@dataclass
class LabeledFact:
    sentence: str
    text: str
    label: str  # "S", "NS" or "IR"


@dataclass
class LabeledResponse:
    """A response of the FActScore human-labelled release; `annotations: null` marks an abstention."""

    topic: str
    output: str
    abstained: bool
    facts: list[LabeledFact]

    def human_decisions(self) -> list[bool]:
        return [fact.label == HUMAN_SUPPORTED for fact in self.facts]


def load_labeled(path: str | Path) -> list[LabeledResponse]:
    """The rows of a `labeled/<Model>.jsonl` file: topic, output, and the human atomic facts of each sentence."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labelled FactScore file not found: {path}")
    responses = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            where = f"{path} line {number}"
            for name in ("topic", "output", "annotations"):
                if name not in row:
                    raise ValueError(f"{where}: missing field {name!r}")
            annotations = row["annotations"]
            facts = []
            for sentence in annotations or []:
                for fact in sentence.get("human-atomic-facts") or []:
                    if fact.get("label") not in HUMAN_LABELS:
                        raise ValueError(f"{where}: human atomic fact label {fact.get('label')!r} is not S, NS or IR")
                    facts.append(LabeledFact(sentence.get("text", ""), fact["text"], fact["label"]))
            responses.append(LabeledResponse(row["topic"], row["output"], annotations is None, facts))
    return responses


def human_summary(responses: Sequence[LabeledResponse], gamma: float = GAMMA) -> FactScoreSummary:
    """FactScore of the human labels under the counting rule of this module."""
    return summarize([ResponseFacts(r.topic, r.abstained, r.human_decisions()) for r in responses], gamma)
