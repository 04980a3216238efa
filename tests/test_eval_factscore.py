import json
import math

import pytest

from rlrf_hub.backends.base import Generation
from rlrf_hub.cards.results import model_index
from rlrf_hub.cards.tables import headline_table
from rlrf_hub.evaluation.cli import format_report
from rlrf_hub.evaluation.factscore import (
    BM25,
    FactDecomposer,
    FactScorer,
    FactScoreSettings,
    KnowledgeSource,
    ResponseFacts,
    compare_with_labels,
    human_summary,
    is_abstention,
    length_penalty,
    load_demos,
    load_labeled,
    split_passages,
    split_sentences,
    summarize,
)
from rlrf_hub.evaluation.factscore.decompose import facts_schema, parse_facts, states_nothing
from rlrf_hub.evaluation.factscore.pipeline import run_factscore
from rlrf_hub.evaluation.factscore.verify import parse_support, verify_messages
from rlrf_hub.evaluation.results import EvaluationReport

LABELED = ("ChatGPT", "InstructGPT", "PerplexityAI")


@pytest.fixture(scope="module")
def wikipedia(data_dir):
    return KnowledgeSource.load(data_dir / "factscore/wikipedia/wikipedia_reference_text.json")


@pytest.mark.parametrize(
    ("model", "expected", "tolerance", "scored"),
    [("ChatGPT", 58.3, 0.1, 157), ("InstructGPT", 42.8, 0.2, 181), ("PerplexityAI", 80.4, 0.2, 158)],
)
def test_factscore_from_human_labels_reproduces_published_numbers(data_dir, model, expected, tolerance, scored):
    summary = human_summary(load_labeled(data_dir / f"factscore/labeled/{model}.jsonl"))
    assert summary.factscore == pytest.approx(expected, abs=tolerance)
    assert summary.num_scored == scored
    assert summary.num_responses == 183
    assert summary.num_scored + summary.num_abstained + summary.num_without_facts == 183
    assert summary.ci[0] < summary.factscore < summary.ci[1]
    assert summary.factscore_length_penalized <= summary.factscore


def test_human_label_counts_match_provenance(data_dir):
    counts = {}
    for model in LABELED:
        labels = [f.label for r in load_labeled(data_dir / f"factscore/labeled/{model}.jsonl") for f in r.facts]
        counts[model] = (labels.count("S"), labels.count("NS"), labels.count("IR"))
    assert counts == {"InstructGPT": (2100, 1971, 655), "ChatGPT": (3194, 1692, 540), "PerplexityAI": (4812, 756, 320)}


def test_load_labeled_names_bad_label(tmp_path):
    row = {
        "topic": "X",
        "output": "X is a singer.",
        "annotations": [
            {"text": "X is a singer.", "human-atomic-facts": [{"text": "X is a singer.", "label": "maybe"}]}
        ],
    }
    path = tmp_path / "Bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"Bad.jsonl line 1: .*'maybe'"):
        load_labeled(path)


def test_summarize_counting_rule_and_length_penalty():
    responses = [
        ResponseFacts("a", False, [True, True, False, False]),
        ResponseFacts("b", False, [True] * 10),
        ResponseFacts("c", True, []),
        ResponseFacts("d", False, []),
    ]
    summary = summarize(responses)
    assert summary.factscore == pytest.approx(75.0)
    assert summary.factscore_length_penalized == pytest.approx((50 * math.exp(1 - 10 / 4) + 100) / 2)
    assert (summary.num_scored, summary.num_abstained, summary.num_without_facts) == (2, 1, 1)
    assert summary.abstention_rate == 25.0 and summary.facts_per_response == 7.0
    assert summarize(responses, gamma=0).factscore_length_penalized == pytest.approx(75.0)


@pytest.mark.parametrize(
    ("n", "penalty"), [(1, math.exp(-9)), (5, math.exp(-1)), (9, math.exp(1 - 10 / 9)), (10, 1.0)]
)
def test_length_penalty(n, penalty):
    assert length_penalty(n) == pytest.approx(penalty)
    assert length_penalty(n, gamma=0) == 1.0


def test_bm25_ranks_matching_document_first():
    docs = [
        "The cat sat on the mat.",
        "Stock markets rallied as investors cheered strong earnings.",
        "A violinist from Lyon taught at the conservatory in Paris.",
    ]
    bm25 = BM25(docs)
    assert bm25.top_k("Which violinist taught in Paris?", 1) == [2]
    assert bm25.top_k("investors and earnings", 2)[0] == 1
    scores = bm25.scores("cat")
    assert scores[0] > 0 and scores[1] == 0 == scores[2]
    assert BM25([]).top_k("anything", 3) == []


def test_retrieval_finds_the_passage_with_the_fact(wikipedia):
    passages = wikipedia.retrieve("Andreas Kisser", "Andreas Kisser was born in São Bernardo do Campo.", k=1)
    assert "São Bernardo do Campo" in passages[0].text
    passages = wikipedia.retrieve("Andreas Kisser", "Andreas Kisser was married to Patricia Perissinotto.", k=2)
    assert any("Patricia Perissinotto" in p.text for p in passages)
    assert all(p.title == "Andreas Kisser" for p in passages)


def test_knowledge_source_title_matching_and_passages(wikipedia):
    assert len(wikipedia.titles()) == 169
    assert wikipedia.title_for("ko itakura") == "Ko Itakura"
    assert wikipedia.title_for("Kō Itakura") == "Ko Itakura"  # resolved_title
    assert "Bridget Moynahan" not in wikipedia  # a fetch failure
    assert wikipedia.retrieve("Bridget Moynahan", "anything") == []
    assert all(len(p.text.split()) <= 200 for p in wikipedia.passages("António de Oliveira Salazar"))


def test_knowledge_source_from_jsonl_rows(tmp_path):
    path = tmp_path / "kb.jsonl"
    rows = [
        {"title": "Ada Lovelace", "text": "Ada Lovelace was an English mathematician."},
        {"title": "Ada Lovelace", "text": "She wrote notes on the Analytical Engine."},
        {"title": "Alan Turing", "text": "Alan Turing was a computer scientist."},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    knowledge = KnowledgeSource.load(path)
    assert [p.text for p in knowledge.retrieve("ada lovelace", "Analytical Engine notes", 1)] == [rows[1]["text"]]
    path.write_text(json.dumps({"title": "X"}) + "\n")
    with pytest.raises(ValueError, match="row 0: missing text field 'text'"):
        KnowledgeSource.load(path)


def test_split_passages_respects_sections_and_size():
    text = "Intro sentence here.\n\n== Early life ==\nBorn in Lyon.\n\n== Career ==\n" + " ".join(["word"] * 12)
    passages = split_passages(text, max_words=5)
    assert passages[0] == "Intro sentence here."
    assert passages[1].startswith("Early life.")
    assert all(len(p.split()) <= 5 for p in passages)
    assert sum(p.split().count("word") for p in passages) == 12


def test_split_sentences_keeps_abbreviations_and_initials():
    text = "Dr. J. R. R. Tolkien was born on Jan. 3, 1892, in the U.S. state. He died in 1973! Was he English?"
    assert split_sentences(text) == [
        "Dr. J. R. R. Tolkien was born on Jan. 3, 1892, in the U.S. state.",
        "He died in 1973!",
        "Was he English?",
    ]
    assert split_sentences("- first item\n- second item") == ["first item", "second item"]


def test_sentence_split_matches_annotated_sentences(data_dir):
    rows = [json.loads(line) for line in open(data_dir / "factscore/labeled/ChatGPT.jsonl", encoding="utf-8")]
    rows = [row for row in rows if row["annotations"]]
    same = sum(len(split_sentences(row["output"])) == len(row["annotations"]) for row in rows)
    assert same / len(rows) > 0.9


def test_abstention_detection_agrees_with_labelled_abstentions(data_dir):
    hits = false_alarms = misses = 0
    for model in LABELED:
        for line in open(data_dir / f"factscore/labeled/{model}.jsonl", encoding="utf-8"):
            row = json.loads(line)
            detected, truth = is_abstention(row["output"]), row["annotations"] is None
            hits += detected and truth
            false_alarms += detected and not truth
            misses += truth and not detected
    assert hits >= 40 and false_alarms <= 3 and misses <= 4
    assert is_abstention("") and is_abstention("I'm sorry, but I could not find information about X.")
    assert not is_abstention("Marie Curie was a physicist and chemist who won two Nobel Prizes.")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"supported": true}', (True, "strict")),
        ('{"supported":false}', (False, "strict")),
        ('Sure. ```json\n{"supported": "yes"}\n```', (True, "tolerant")),
        ("The statement is not supported by the passages.", (False, "tolerant")),
        ("True", (True, "tolerant")),
        ("I cannot tell.", None),
    ],
)
def test_parse_support(reply, expected):
    assert parse_support(reply) == expected


def test_parse_facts():
    assert parse_facts('{"facts": ["A is a singer.", " "]}') == (["A is a singer."], "strict")
    assert parse_facts('Here: {"facts": ["a", "b",]}') == (["a", "b"], "tolerant")
    assert parse_facts("1. first\n2. second") == (["first", "second"], "tolerant")
    assert parse_facts("no facts here") is None
    cut = '{"facts": ["A was born in 1990.", "A is a \\"singer\\".", "A pla'
    assert parse_facts(cut) == (["A was born in 1990.", 'A is a "singer".'], "tolerant"), "complete facts are kept"
    assert parse_facts('{"facts": ["A was') is None
    assert facts_schema(4, 50, 1)["properties"]["facts"]["minItems"] == 1


def test_demos_from_shared_folder_and_selection(data_dir):
    demos = load_demos(data_dir / "factscore/demos")
    assert len(demos) >= 21 and all(demo.facts for demo in demos)
    assert len(load_demos(data_dir / "factscore/demos/demons.txt")) == 21
    decomposer = FactDecomposer(demos, num_demos=2)
    chosen = decomposer.examples_for("Collins became an astronaut selected by NASA in 1963.")
    assert len(chosen) == 2 and any("NASA" in demo.sentence for demo in chosen)
    content = decomposer.messages("Michael Collins", "He flew on Apollo 11.")[0]["content"]
    assert "Michael Collins" in content and "He flew on Apollo 11." in content
    with pytest.raises(FileNotFoundError):
        load_demos(data_dir / "factscore/no-such-demos")


def test_verify_messages_show_passages(wikipedia):
    passages = wikipedia.retrieve("Andreas Kisser", "guitarist of Sepultura", 2)
    content = verify_messages("Andreas Kisser", "He plays guitar in Sepultura.", passages)[0]["content"]
    assert content.count("Title: Andreas Kisser") == 2 and "He plays guitar in Sepultura." in content


def test_judge_agreement_with_human_labels_on_a_few_facts(data_dir, tiny_model, wikipedia):
    from rlrf_hub.backends.transformers_backend import TransformersBackend

    judge = TransformersBackend.from_pretrained(tiny_model, batch_size=8)
    scorer = FactScorer(judge, wikipedia, settings=FactScoreSettings(num_passages=1))
    responses = load_labeled(data_dir / "factscore/labeled/ChatGPT.jsonl")
    report = compare_with_labels(scorer, responses, "ChatGPT", limit=2, max_facts_per_response=3)
    assert report.model == "ChatGPT" and report.judge == tiny_model
    assert report.num_responses == 2 and report.num_facts == 6
    assert report.true_positives + report.false_positives + report.false_negatives + report.true_negatives == 6
    assert 0 <= report.agreement <= 100
    assert 0 <= report.judge_factscore <= 100
    chosen = [r for r in responses if not r.abstained and r.facts and r.topic in wikipedia][:2]
    human = [sum(f.label == "S" for f in r.facts[:3]) / 3 for r in chosen]
    assert report.human_factscore == pytest.approx(100 * sum(human) / 2)
    assert report.factscore_error == pytest.approx(report.judge_factscore - report.human_factscore)


class LazyJudge:
    """Stands in for a small judge under constrained decoding: it gives the shortest reply the schema accepts (as
    few facts as `minItems` allows, each the sentence itself) and calls every fact supported."""

    model_id, revision, adapter = "lazy-judge", None, None

    def __init__(self):
        self.sentences: list[str] = []
        self.prompts: list[str] = []

    def generate(self, requests, params, desc=None):
        replies = []
        for request in requests:
            self.prompts.append(request.messages[0]["content"])
            properties = request.json_schema["properties"]
            if "facts" in properties:
                sentence = request.messages[0]["content"].rsplit("Sentence: ", 1)[1].split("\n")[0]
                self.sentences.append(sentence)
                reply = {"facts": [sentence] * properties["facts"]["minItems"]}
            else:
                reply = {"supported": True}
            replies.append([Generation(json.dumps(reply), 8, "stop")])
        return replies


class BioPolicy:
    model_id, revision, adapter = "bio-policy", None, None

    def generate(self, requests, params, desc=None):
        text = "Sure!\nHere is a short bio:\n{0} was born in Lyon. {0} played football for Lille. I hope this helps!"
        topics = [request.messages[0]["content"].removeprefix("Tell me a bio of ").rstrip(".") for request in requests]
        return [[Generation(text.format(topic), 30, "stop")] for topic in topics]


def test_support_checks_show_the_retrieved_passages_in_the_articles_order(wikipedia):
    """Ranked order would put each fact's best passage first, so facts that retrieve the same passages would not
    share their prompts up to the fact, and the packed decoder could not compute that part once."""
    judge = LazyJudge()
    scorer = FactScorer(judge, wikipedia, settings=FactScoreSettings(num_passages=3))
    facts = [
        "Andreas Kisser was married to Patricia Perissinotto.",
        "Andreas Kisser was born in São Bernardo do Campo.",
    ]
    verdicts = scorer.verify([("Andreas Kisser", fact) for fact in facts])
    for fact, (_, _, shown), prompt in zip(facts, verdicts, judge.prompts, strict=True):
        ranked = [p.index for p in wikipedia.retrieve("Andreas Kisser", f"Andreas Kisser {fact}", 3)]
        assert ranked != sorted(ranked), "a fact whose ranking differs from the article's order"
        assert shown == sorted(ranked)
        texts = [p.text for p in wikipedia.passages("Andreas Kisser")]
        assert sorted(prompt.index(texts[i]) for i in shown) == [prompt.index(texts[i]) for i in shown]


def test_states_nothing_sets_aside_only_sentences_without_claims():
    for sentence in ("Sure!", "Here is a short bio:", "Who is she?", "I hope this helps!", "Let me know more."):
        assert states_nothing(sentence), sentence
    for sentence in ("Sure enough, he won the cup in 1998.", "She was born in Lyon.", "Thanks to him, Lille won."):
        assert not states_nothing(sentence), sentence


def test_a_lazy_constrained_judge_still_yields_facts(wikipedia):
    """The CPU run's FactScore was 0 for every model: its judge answered `{"facts": []}` for each sentence, which the
    schema allowed, so no fact was checked and the score was undefined; the table then showed the abstention rate
    (0 [0, 56.15]) in the FactScore column. The default settings must give a lazy judge no such way out."""
    judge = LazyJudge()
    topics = wikipedia.titles()[:2]
    outcome = run_factscore(BioPolicy(), FactScorer(judge, wikipedia), topics)
    by_metric = {result.metric: result for result in outcome.results}
    assert by_metric["factscore"].value == 100.0 and by_metric["factscore"].n == 2
    assert by_metric["facts_per_response"].value == 2
    assert by_metric["factscore"].item_ids == topics and by_metric["factscore"].item_values == [100.0, 100.0]
    assert len(judge.sentences) == 4 and not any(states_nothing(sentence) for sentence in judge.sentences)
    labelled = {"M0": EvaluationReport("policy", results=outcome.results)}
    assert headline_table(labelled)[1][0][1] == "100 [100, 100]"


def test_factscore_without_facts_is_undefined_with_its_reason(wikipedia):
    """With empty fact lists allowed the same judge checks nothing: FactScore is reported as undefined, with the
    reason, and the table says so instead of showing another metric."""
    scorer = FactScorer(LazyJudge(), wikipedia, settings=FactScoreSettings(min_facts_per_sentence=0))
    outcome = run_factscore(BioPolicy(), scorer, wikipedia.titles()[:3])
    factscore = next(result for result in outcome.results if result.metric == "factscore")
    assert factscore.value is None and factscore.n == 0
    assert factscore.undefined == "no answer to score: of 3, 0 abstained and 3 yielded no atomic fact"
    assert "factscore_length_penalized" not in {result.metric for result in outcome.results}
    labelled = {"M0": EvaluationReport("policy", results=outcome.results)}
    headers, rows = headline_table(labelled)
    assert rows[0][headers.index("FactScore")] == f"undefined ({factscore.undefined})"
    assert all(entry.metric_type != "factscore" for entry in model_index(labelled["M0"]))
    printed = format_report(labelled["M0"]).splitlines()
    assert any("undefined" in line and factscore.undefined in line for line in printed), printed
