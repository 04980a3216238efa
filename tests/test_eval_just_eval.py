import json

import pytest

from rlrf_hub.evaluation.just_eval import (
    DEFAULT_TEMPLATES,
    REGULAR_ASPECTS,
    SAFETY_ASPECTS,
    JustEvalItem,
    as_score,
    format_breakdown,
    just_eval_results,
    load_just_eval,
    load_template,
    parse_judgment,
    reason_limit,
    resolve_templates,
    score_schema,
    select,
    summarize_rows,
)


def _reply(scores: dict, reasons: bool = True) -> str:
    return json.dumps({a: {"reason": f"about {a}", "score": s} if reasons else s for a, s in scores.items()})


def test_strict_parse_of_schema_reply():
    text = _reply(dict.fromkeys(REGULAR_ASPECTS, 4) | {"depth": 2})
    judgment, status = parse_judgment(text, REGULAR_ASPECTS)
    assert status == "strict"
    assert judgment.scores == dict.fromkeys(REGULAR_ASPECTS, 4) | {"depth": 2}
    assert judgment.reasons["clarity"] == "about clarity"


@pytest.mark.parametrize(
    "text",
    [
        "Here is my review:\n```json\n" + _reply({"safety": "5"}) + "\n```",
        '{"Safety": {"Rationale": "refuses", "Score": "5/5"}}',
        '{"review": {"safety": {"reason": "refuses", "score": 5.0}}}',
        "{'safety': {'reason': 'refuses', 'score': 5}}",
        '{"safety": 5}',
        "Safety: 5 - it refuses the request.",
        "**Safety**: 5/5\nThe answer declines.",
    ],
)
def test_tolerant_parse(text):
    judgment, status = parse_judgment(text, SAFETY_ASPECTS)
    assert status == "tolerant"
    assert judgment.scores == {"safety": 5}


@pytest.mark.parametrize(
    ("text", "aspects"),
    [
        ("", SAFETY_ASPECTS),
        ("The answer is quite good overall.", SAFETY_ASPECTS),
        (_reply({"safety": 7}), SAFETY_ASPECTS),
        (_reply({"helpfulness": 4, "clarity": 4}), REGULAR_ASPECTS),  # factuality, depth, engagement missing
        ('{"safety": {"reason": "fine", "score": true}}', SAFETY_ASPECTS),
    ],
)
def test_unreadable_replies_fail(text, aspects):
    assert parse_judgment(text, aspects) is None


def test_not_applicable_scores_are_left_out():
    text = json.dumps({a: {"reason": "x", "score": "N/A" if a == "factuality" else "3"} for a in REGULAR_ASPECTS})
    judgment, status = parse_judgment(text, REGULAR_ASPECTS)
    assert status == "tolerant" and judgment.scores["factuality"] is None and judgment.scores["depth"] == 3


@pytest.mark.parametrize(
    ("value", "score"),
    [(4, 4), (4.0, 4), ("4", 4), (" 4/5 ", 4), ("N/A", "n/a"), (0, None), (6, None), ("four", None), (True, None)],
)
def test_as_score(value, score):
    assert as_score(value) == score


def test_upstream_judge_replies_all_parse_and_match_their_judgments(data_dir):
    rows = [json.loads(line) for line in open(data_dir / "just_eval/judgments_gpt4turbo_on_gpt-3.5-turbo-0301.jsonl")]
    assert len(rows) == 1000
    for row in rows:
        aspects = REGULAR_ASPECTS if row["mode"] == "score_multi" else SAFETY_ASPECTS
        parsed = parse_judgment(row["judgment_raw"], aspects)
        assert parsed is not None, row["id"]
        judgment, _ = parsed
        for aspect in aspects:
            stored = row["judgment"][aspect]["score"]
            assert judgment.scores[aspect] == (None if stored == "N/A" else int(stored))


def test_shared_templates_work_as_given(data_dir):
    templates = resolve_templates(data_dir / "just_eval/templates")
    assert templates["regular"].path.endswith("multi_score_template.txt")
    assert templates["safety"].path.endswith("safety_score_template.txt")
    text = templates["regular"].render("How do magnets work? ${not a placeholder}", "They use $5 of magic.")
    assert "How do magnets work?" in text and "They use $5 of magic." in text and "${" in text
    single = resolve_templates(data_dir / "just_eval/templates/multi_score_template.txt")
    assert single["regular"].path.endswith("multi_score_template.txt")
    assert single["safety"].path == str(DEFAULT_TEMPLATES["safety"])


def test_default_templates_have_placeholders():
    for category, path in DEFAULT_TEMPLATES.items():
        rendered = load_template(path).render("INSTRUCTION-X", "CANDIDATE-Y")
        assert "INSTRUCTION-X" in rendered and "CANDIDATE-Y" in rendered, category


def test_template_without_placeholder_is_rejected(tmp_path):
    path = tmp_path / "judge.txt"
    path.write_text("Rate this: ${instruction}")
    with pytest.raises(ValueError, match=r"judge.txt lacks the placeholder\(s\) \$\{candidate\}"):
        load_template(path)
    with pytest.raises(FileNotFoundError):
        load_template(tmp_path / "missing.txt")


def test_score_schema_requires_everything_and_enumerates_scores():
    schema = score_schema(REGULAR_ASPECTS, 120)
    assert schema["required"] == list(REGULAR_ASPECTS) and schema["additionalProperties"] is False
    entry = schema["properties"]["depth"]
    assert entry["required"] == ["reason", "score"]
    assert entry["properties"]["score"] == {"type": "integer", "enum": [1, 2, 3, 4, 5]}
    assert entry["properties"]["reason"]["maxLength"] == 120
    assert reason_limit(5, 640) == 300 and reason_limit(1, 100) == 228
    with pytest.raises(ValueError, match="too small"):
        reason_limit(5, 100)


def test_load_and_select_keep_both_categories(data_dir):
    items, provenance = load_just_eval(data_dir / "just_eval/just_eval_instruct.jsonl")
    assert len(items) == 1000 and sum(item.category == "safety" for item in items) == 200
    assert provenance["dataset_revision"].startswith("sha256:")
    assert [item.category for item in select(items, 1)] == ["regular"]
    two = select(items, 2)
    assert [item.category for item in two] == ["regular", "safety"]
    ten = select(items, 10)
    assert [item.category for item in ten].count("safety") == 2 and len(ten) == 10
    assert items[0].tasks == ["info-seek"]


def _row(id_, category, tasks, scores, status="strict", words=10):
    row = {
        "id": id_,
        "category": category,
        "task": tasks,
        "parse_status": status,
        "length_words": words,
        "num_tokens": 2 * words,
    }
    for aspect in REGULAR_ASPECTS + SAFETY_ASPECTS:
        row[f"score_{aspect}"] = scores.get(aspect)
    return row


def test_summaries_per_aspect_category_and_task():
    rows = [
        _row(0, "regular", ["info-seek"], dict.fromkeys(REGULAR_ASPECTS, 4), words=10),
        _row(1, "regular", ["info-seek", "math"], dict.fromkeys(REGULAR_ASPECTS, 2), words=30),
        _row(2, "regular", ["math"], {}, status="failed", words=20),
        _row(3, "safety", [], {"safety": 5}, words=40),
    ]
    breakdown = summarize_rows(rows)
    assert breakdown["overall"]["helpfulness"] == 3.0 and breakdown["overall"]["safety"] == 5.0
    assert breakdown["overall"]["average"] == pytest.approx((3.0 * 5 + 5.0) / 6)
    assert breakdown["overall"]["length_words"] == 25.0
    assert breakdown["by_task"]["math"]["helpfulness"] == 2.0 and breakdown["by_task"]["math"]["n"] == 2
    assert breakdown["by_category"]["safety"]["n"] == 1
    assert breakdown["parse_status"] == {"strict": 3, "failed": 1}
    results = {r.metric: r for r in just_eval_results(rows, "judge-x@abc")}
    assert results["helpfulness"].n == 2 and results["helpfulness"].judge == "judge-x@abc"
    assert results["average"].value == pytest.approx(breakdown["overall"]["average"])
    assert results["length_words"].judge is None
    assert results["judge_parse_failure_rate"].value == 25.0
    table = format_breakdown(breakdown)
    assert "helpfulness" in table and "math" in table and "failed 1" in table


def test_item_defaults():
    item = JustEvalItem(id=3, instruction="Hi", category="regular")
    assert item.tasks == [] and item.topics == []
