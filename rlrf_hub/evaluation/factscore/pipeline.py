"""FactScore of a policy, and of a judge against the human labels.

`FactScorer` holds the judge and the knowledge source: it splits answers into sentences, has the judge
break each sentence into atomic facts, retrieves the `num_passages` best passages of the entity's article
for each fact (BM25 on "<entity> <fact>") and has the judge decide support. The passages are shown in the
article's order, not by rank: facts about one entity that retrieve the same passages then share their prompt
up to the fact itself, which the packed decoder computes once. A judge reply that cannot be
read even after a retry counts the fact as not supported (the conservative reading) and is counted.
Entities the knowledge source has no article for are skipped: without evidence every fact would read as
unsupported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from datasets import Features, Value
from datasets import Sequence as FeatureList

from ...backends.base import GenerationBackend, GenerationRequest, SamplingParams
from ..judging import JUDGE_PARAMS, JudgeReply, ask_judge, judge_identity
from ..records import TaskOutcome, file_digest, load_records
from ..results import TaskResult
from ..stats import wilson_interval
from .abstention import is_abstention
from .decompose import (
    FACT_MAX_CHARS,
    MAX_FACTS_PER_SENTENCE,
    FactDecomposer,
    facts_schema,
    parse_facts,
    split_sentences,
    states_nothing,
)
from .knowledge import KnowledgeSource
from .scoring import GAMMA, FactScoreSummary, LabeledResponse, ResponseFacts, length_penalty, response_score, summarize
from .verify import SUPPORT_SCHEMA, parse_support, verify_messages

logger = logging.getLogger(__name__)

TASK = "factscore"
PROMPT_TEMPLATE = "Tell me a bio of {topic}."
POLICY_PARAMS = SamplingParams(max_new_tokens=512, temperature=0.0, top_p=1.0, do_sample=False, seed=0)

ITEM_FEATURES = Features(
    {
        "topic": Value("string"),
        "prompt": Value("string"),
        "response": Value("string"),
        "num_tokens": Value("int32"),
        "abstained": Value("bool"),
        "num_sentences": Value("int32"),
        "num_facts": Value("int32"),
        "num_supported": Value("int32"),
        "score": Value("float64"),
        "score_length_penalized": Value("float64"),
        "decompose_failures": Value("int32"),
        "verify_failures": Value("int32"),
        "judge": Value("string"),
    }
)
FACT_FEATURES = Features(
    {
        "topic": Value("string"),
        "sentence_index": Value("int32"),
        "sentence": Value("string"),
        "fact": Value("string"),
        "supported": Value("bool"),
        "parse_status": Value("string"),
        "passages": FeatureList(Value("int32")),
        "judge_reply": Value("string"),
        "judge": Value("string"),
    }
)


@dataclass
class FactScoreSettings:
    """How answers are decomposed and checked.

    `min_facts_per_sentence` is the least number of facts the decomposition schema accepts for a sentence that
    makes a claim (`decompose.states_nothing` sets aside those that do not). At 0 a small judge under constrained
    decoding answers `{"facts": []}` for every sentence (the 135M default did, on every biography), which leaves no
    fact to check and FactScore undefined; 1 makes it name at least one.
    """

    num_passages: int = 5
    gamma: float = GAMMA
    decompose_max_new_tokens: int = 384
    verify_max_new_tokens: int = 16
    max_facts_per_sentence: int = MAX_FACTS_PER_SENTENCE
    min_facts_per_sentence: int = 1
    fact_max_chars: int = FACT_MAX_CHARS
    judge_retries: int = 1


@dataclass
class CheckedFact:
    topic: str
    sentence_index: int
    sentence: str
    fact: str
    supported: bool
    reply: JudgeReply
    passages: list[int]


@dataclass
class ScoredAnswer:
    topic: str
    response: str
    abstained: bool
    sentences: list[str]
    facts: list[CheckedFact]
    decompose_failures: int

    def as_response_facts(self) -> ResponseFacts:
        return ResponseFacts(self.topic, self.abstained, [fact.supported for fact in self.facts])


@dataclass
class AgreementReport:
    """How the configured judge's support decisions on the human atomic facts compare with the human labels."""

    model: str
    judge: str
    num_responses: int
    num_facts: int
    agreement: float
    human_factscore: float | None
    judge_factscore: float | None
    factscore_error: float | None
    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int
    verify_failures: int
    skipped_without_knowledge: int


class FactScorer:
    def __init__(
        self,
        judge: GenerationBackend,
        knowledge: KnowledgeSource,
        decomposer: FactDecomposer | None = None,
        settings: FactScoreSettings | None = None,
    ):
        self.judge = judge
        self.knowledge = knowledge
        self.decomposer = decomposer or FactDecomposer()
        self.settings = settings or FactScoreSettings()
        self.judge_name = judge_identity(judge)

    def decompose(
        self, topics: Sequence[str], responses: Sequence[str]
    ) -> list[tuple[list[str], list[list[str]], int]]:
        """Per answer: its sentences, the facts of each sentence, and how many sentences could not be read."""
        sentences = [split_sentences(response) for response in responses]
        schema = facts_schema(
            self.settings.max_facts_per_sentence, self.settings.fact_max_chars, self.settings.min_facts_per_sentence
        )
        allow_empty = self.settings.min_facts_per_sentence == 0
        requests, where = [], []
        for answer, (topic, parts) in enumerate(zip(topics, sentences, strict=True)):
            for index, sentence in enumerate(parts):
                if states_nothing(sentence):
                    continue
                messages = self.decomposer.messages(topic, sentence, allow_empty)
                requests.append(GenerationRequest(messages, json_schema=schema))
                where.append((answer, index))
        params = replace(JUDGE_PARAMS, max_new_tokens=self.settings.decompose_max_new_tokens)
        replies = ask_judge(self.judge, requests, parse_facts, params, self.settings.judge_retries, "factscore facts")
        facts: list[list[list[str]]] = [[[] for _ in parts] for parts in sentences]
        failures = [0] * len(responses)
        for (answer, index), reply in zip(where, replies, strict=True):
            if reply.status == "failed":
                failures[answer] += 1
            else:
                facts[answer][index] = list(reply.value)[: self.settings.max_facts_per_sentence]
        return list(zip(sentences, facts, failures, strict=True))

    def verify(self, claims: Sequence[tuple[str, str]]) -> list[tuple[bool, JudgeReply, list[int]]]:
        """Per `(topic, fact)`: supported or not, the judge's reply and the passages it was shown."""
        requests, shown = [], []
        for topic, fact in claims:
            ranked = self.knowledge.retrieve(topic, f"{topic} {fact}", self.settings.num_passages)
            passages = sorted(ranked, key=lambda passage: passage.index)
            shown.append([passage.index for passage in passages])
            requests.append(GenerationRequest(verify_messages(topic, fact, passages), json_schema=SUPPORT_SCHEMA))
        params = replace(JUDGE_PARAMS, max_new_tokens=self.settings.verify_max_new_tokens)
        replies = ask_judge(
            self.judge, requests, parse_support, params, self.settings.judge_retries, "factscore support"
        )
        return [(reply.value is True, reply, indices) for reply, indices in zip(replies, shown, strict=True)]

    def score_answers(self, topics: Sequence[str], responses: Sequence[str]) -> list[ScoredAnswer]:
        abstained = [is_abstention(response) for response in responses]
        answered = [i for i, a in enumerate(abstained) if not a]
        decomposed = self.decompose([topics[i] for i in answered], [responses[i] for i in answered])
        claims, owners = [], []
        for i, (sentences, facts, _) in zip(answered, decomposed, strict=True):
            for index, sentence_facts in enumerate(facts):
                for fact in sentence_facts:
                    claims.append((topics[i], fact))
                    owners.append((i, index, sentences[index]))
        verdicts = self.verify(claims)
        scored = [
            ScoredAnswer(topic, response, a, [], [], 0)
            for topic, response, a in zip(topics, responses, abstained, strict=True)
        ]
        for i, (sentences, _, failures) in zip(answered, decomposed, strict=True):
            scored[i].sentences, scored[i].decompose_failures = sentences, failures
        for (i, index, sentence), (topic, fact), (supported, reply, passages) in zip(
            owners, claims, verdicts, strict=True
        ):
            scored[i].facts.append(CheckedFact(topic, index, sentence, fact, supported, reply, passages))
        return scored


def bio_prompt(topic: str) -> str:
    return PROMPT_TEMPLATE.format(topic=topic)


def load_topics(source: str | Path | None, knowledge: KnowledgeSource) -> tuple[list[str], dict]:
    """Entities to ask about: a `.txt` file (one per line), rows with a `topic` field, or the knowledge's titles."""
    if source is None:
        return knowledge.titles(), {"dataset_id": knowledge.name, "dataset_revision": None, "split": None}
    path = Path(source)
    if path.suffix == ".txt":
        if not path.is_file():
            raise FileNotFoundError(f"topic list not found: {path}")
        topics = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        revision = f"sha256:{file_digest(path)[:16]}"
        return topics, {"dataset_id": str(source), "dataset_revision": revision, "split": None}
    records = load_records(source)
    topics = []
    for index, row in enumerate(records.rows):
        if not isinstance(row.get("topic"), str):
            raise ValueError(f"{source} row {index}: missing text field 'topic' (fields present: {sorted(row)})")
        topics.append(row["topic"])
    return topics, {"dataset_id": records.dataset_id, "dataset_revision": records.revision, "split": records.split}


def asked_topics(topics: Sequence[str], knowledge: KnowledgeSource, limit: int | None) -> list[str]:
    """The first `limit` of `topics` that the knowledge source has an article for (a warning names the others)."""
    known = [topic for topic in topics if topic in knowledge]
    if len(known) < len(topics):
        skipped, name = len(topics) - len(known), knowledge.name
        logger.warning("FactScore: %d of %d entities have no article in %s; skipped", skipped, len(topics), name)
    if not known:
        raise ValueError(f"none of the {len(topics)} entities has an article in {knowledge.name}")
    return known[:limit] if limit is not None else known


def bio_requests(topics: Sequence[str]) -> list[GenerationRequest]:
    return [GenerationRequest([{"role": "user", "content": bio_prompt(topic)}]) for topic in topics]


def run_factscore(
    policy: GenerationBackend,
    scorer: FactScorer,
    topics: Sequence[str],
    provenance: dict | None = None,
    params: SamplingParams = POLICY_PARAMS,
    limit: int | None = None,
) -> TaskOutcome:
    """Ask the policy for a bio of each entity the knowledge source covers (the first `limit`) and score them."""
    known = asked_topics(topics, scorer.knowledge, limit)
    generations = [outputs[0] for outputs in policy.generate(bio_requests(known), params, desc="factscore bios")]
    scored = scorer.score_answers(known, [generation.text for generation in generations])
    summary = summarize([answer.as_response_facts() for answer in scored], scorer.settings.gamma)
    items, facts = _tables(scored, generations, scorer)
    asked = sum(len(answer.sentences) + len(answer.facts) for answer in scored)
    failed = sum(
        answer.decompose_failures + sum(f.reply.status == "failed" for f in answer.facts) for answer in scored
    )
    per_item = ([item["topic"] for item in items], [_percent(item["score"]) for item in items])
    results = factscore_results(summary, scorer.judge_name, provenance, (failed, asked), per_item)
    return TaskOutcome(results, {"items": (items, ITEM_FEATURES), "facts": (facts, FACT_FEATURES)})


def factscore_results(
    summary: FactScoreSummary,
    judge: str,
    provenance: dict | None = None,
    judge_failures: tuple[int, int] | None = None,
    per_item: tuple[list[str], list[float | None]] | None = None,
) -> list[TaskResult]:
    """FactScore and its length-penalised variant (percent, mean interval), facts per response, the abstention
    rate (by rule, so no judge) and, given `(failed, asked)`, the share of judge replies that were unreadable.

    When no answer was scored, FactScore is undefined: its result has no value and says why (`undefined`), rather
    than being left out, which let a table fall back to another metric and show it as if it were the score.
    `per_item` (entities and their answers' scores) goes on the FactScore result.
    """
    provenance = provenance or {}
    items = {"item_ids": per_item[0], "item_values": per_item[1]} if per_item else {}
    if summary.factscore is None:
        reason = undefined_reason(summary, judge_failures)
        results = [TaskResult(TASK, "factscore", None, 0, judge=judge, undefined=reason, **provenance, **items)]
    else:
        results = []
        for metric, value, ci in (
            ("factscore", summary.factscore, summary.ci),
            ("factscore_length_penalized", summary.factscore_length_penalized, summary.length_penalized_ci),
        ):
            low, high = ci or (None, None)
            extra = items if metric == "factscore" else {}
            results.append(
                TaskResult(TASK, metric, value, summary.num_scored, low, high, judge, **provenance, **extra)
            )
        per_response = summary.facts_per_response
        results.append(
            TaskResult(TASK, "facts_per_response", per_response, summary.num_scored, judge=judge, **provenance)
        )
    if summary.num_responses:
        low, high = wilson_interval(summary.num_abstained, summary.num_responses)
        results.append(
            TaskResult(
                TASK,
                "abstention_rate",
                summary.abstention_rate,
                summary.num_responses,
                ci_low=100 * low,
                ci_high=100 * high,
                **provenance,
            )
        )
    if judge_failures and judge_failures[1]:
        failed, asked = judge_failures
        low, high = wilson_interval(failed, asked)
        results.append(
            TaskResult(
                TASK,
                "judge_parse_failure_rate",
                100 * failed / asked,
                asked,
                ci_low=100 * low,
                ci_high=100 * high,
                judge=judge,
                **provenance,
            )
        )
    return results


def undefined_reason(summary: FactScoreSummary, judge_failures: tuple[int, int] | None = None) -> str:
    """Why no answer could be scored: how many abstained and how many yielded no atomic fact."""
    if not summary.num_responses:
        return "no answers"
    reason = (
        f"no answer to score: of {summary.num_responses}, {summary.num_abstained} abstained and "
        f"{summary.num_without_facts} yielded no atomic fact"
    )
    if judge_failures and judge_failures[0]:
        reason += f" ({judge_failures[0]} of {judge_failures[1]} judge replies unreadable)"
    return reason


def _percent(score: float | None) -> float | None:
    return None if score is None else 100 * score


def _tables(scored: Sequence[ScoredAnswer], generations, scorer: FactScorer) -> tuple[list[dict], list[dict]]:
    items, facts = [], []
    for answer, generation in zip(scored, generations, strict=True):
        decisions = [fact.supported for fact in answer.facts]
        score = response_score(decisions)
        items.append(
            {
                "topic": answer.topic,
                "prompt": bio_prompt(answer.topic),
                "response": answer.response,
                "num_tokens": generation.num_tokens,
                "abstained": answer.abstained,
                "num_sentences": len(answer.sentences),
                "num_facts": len(decisions),
                "num_supported": sum(decisions),
                "score": score,
                "score_length_penalized": None
                if score is None
                else score * length_penalty(len(decisions), scorer.settings.gamma),
                "decompose_failures": answer.decompose_failures,
                "verify_failures": sum(fact.reply.status == "failed" for fact in answer.facts),
                "judge": scorer.judge_name,
            }
        )
        for fact in answer.facts:
            facts.append(
                {
                    "topic": fact.topic,
                    "sentence_index": fact.sentence_index,
                    "sentence": fact.sentence,
                    "fact": fact.fact,
                    "supported": fact.supported,
                    "parse_status": fact.reply.status,
                    "passages": fact.passages,
                    "judge_reply": fact.reply.text,
                    "judge": scorer.judge_name,
                }
            )
    return items, facts


def compare_with_labels(
    scorer: FactScorer,
    responses: Sequence[LabeledResponse],
    model: str,
    limit: int | None = None,
    max_facts_per_response: int | None = None,
) -> AgreementReport:
    """Have the judge decide support for each human atomic fact and compare with the human labels.

    Only responses that are scored under the counting rule (not abstained, at least one fact) and whose
    entity the knowledge source covers take part; both FactScores are computed on that same subset.
    """
    usable = [r for r in responses if not r.abstained and r.facts]
    chosen = [r for r in usable if r.topic in scorer.knowledge]
    skipped = len(usable) - len(chosen)
    chosen = chosen[:limit] if limit is not None else chosen
    facts_of = [r.facts[:max_facts_per_response] for r in chosen]
    verdicts = scorer.verify(
        [(r.topic, fact.text) for r, facts in zip(chosen, facts_of, strict=True) for fact in facts]
    )
    human, judged = [], []
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    position = 0
    for response, facts in zip(chosen, facts_of, strict=True):
        human_decisions = [fact.label == "S" for fact in facts]
        judge_decisions = [verdict[0] for verdict in verdicts[position : position + len(facts)]]
        position += len(facts)
        for h, j in zip(human_decisions, judge_decisions, strict=True):
            counts[("t" if h == j else "f") + ("p" if j else "n")] += 1
        human.append(ResponseFacts(response.topic, False, human_decisions))
        judged.append(ResponseFacts(response.topic, False, judge_decisions))
    num_facts = len(verdicts)
    human_score = summarize(human, scorer.settings.gamma).factscore
    judge_score = summarize(judged, scorer.settings.gamma).factscore
    return AgreementReport(
        model=model,
        judge=scorer.judge_name,
        num_responses=len(chosen),
        num_facts=num_facts,
        agreement=100 * (counts["tp"] + counts["tn"]) / num_facts if num_facts else 0.0,
        human_factscore=human_score,
        judge_factscore=judge_score,
        factscore_error=None if human_score is None or judge_score is None else judge_score - human_score,
        true_positives=counts["tp"],
        false_positives=counts["fp"],
        false_negatives=counts["fn"],
        true_negatives=counts["tn"],
        verify_failures=sum(verdict[1].status == "failed" for verdict in verdicts),
        skipped_without_knowledge=skipped,
    )
