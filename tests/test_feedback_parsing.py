import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlrf_hub.aspects import ASPECT_NAMES
from rlrf_hub.feedback.parsing import as_rating, parse_ratings, parse_selection
from rlrf_hub.feedback.templates import CRITIQUE_MAX_CHARS, dump_ratings, format_feedback

THREE = ["Logical Correctness", "Factuality", "Readability"]


def contract(ratings, critiques=None, aspects=THREE):
    critiques = critiques or [f"critique {i}" for i in range(len(aspects))]
    return dump_ratings(aspects, ratings, critiques)


def test_strict_contract_reply():
    parsed = parse_ratings(contract([1, 0, -1], ["right", "mostly", "messy"]), THREE)
    assert parsed.status == "strict"
    assert parsed.aspects == THREE
    assert parsed.ratings == [1, 0, -1]
    assert parsed.critiques == ["right", "mostly", "messy"]


def test_strict_keeps_requested_order_whatever_the_reply_order():
    reply = json.dumps(
        {a: {"critique": a, "rating": r} for a, r in reversed(list(zip(THREE, [1, 0, -1], strict=True)))}
    )
    parsed = parse_ratings(reply, THREE)
    assert parsed.status == "strict"
    assert parsed.ratings == [1, 0, -1]
    assert parsed.critiques == THREE


@pytest.mark.parametrize(
    "reply",
    [
        "```json\n" + contract([1, 0, -1]) + "\n```",
        "Here is my review:\n" + contract([1, 0, -1]) + "\nThanks!",
        json.dumps(
            {
                "logical_correctness": {"critique": "a", "rating": 1},
                "FACTUALITY": {"critique": "b", "rating": 0},
                "readability": {"Critique": "c", "Rating": -1},
            }
        ),
        json.dumps({a: {"critique": "x", "rating": r} for a, r in zip(THREE, ["+1", "0", "-1"], strict=True)}),
        json.dumps({a: {"critique": "x", "rating": r} for a, r in zip(THREE, [1.0, 0.0, -1.0], strict=True)}),
        '{"Logical Correctness": {"critique": "x", "rating": 1}, "Factuality": {"critique": "y", "rating": 0}, '
        '"Readability": {"critique": "z", "rating": -1},}',
        "{'Logical Correctness': 1, 'Factuality': 0, 'Readability': -1}",
        "Logical Correctness: 1 all steps hold\nFactuality: 0 one claim is vague\nReadability: -1 hard to follow",
        "- **Logical Correctness**: 1\n- **Factuality**: rating: 0\n- **Readability** = -1",
        format_feedback(THREE, [1, 0, -1], ["all steps hold", "one claim is vague", "hard to follow"]),
        '{"ratings": {"Logical Correctness": 1, "Factuality": 0, "Readability": -1}, '
        '"critiques": {"Logical Correctness": "a", "Factuality": "b", "Readability": "c"}}',
        '{"feedback": ' + contract([1, 0, -1]) + "}",
    ],
)
def test_tolerant_readings(reply):
    parsed = parse_ratings(reply, THREE)
    assert parsed is not None, reply
    assert parsed.status == "tolerant"
    assert parsed.ratings == [1, 0, -1]
    assert parsed.aspects == THREE


def test_paper_style_trailing_dict_takes_the_text_as_critique():
    reply = 'The calculation of the total forgets the tax, so the final answer is off.\n{"Logical Correctness": -1}'
    parsed = parse_ratings(reply, ["Logical Correctness"])
    assert parsed.status == "tolerant"
    assert parsed.ratings == [-1]
    assert "forgets the tax" in parsed.critiques[0]


def test_line_critique_and_format_feedback_round_trip():
    text = format_feedback(THREE, [0, 1, -1], ["a small gap", "accurate", "one long block"])
    assert text.splitlines()[0] == "Logical Correctness (0): a small gap"
    parsed = parse_ratings(text, THREE)
    assert parsed.critiques == ["a small gap", "accurate", "one long block"]


def test_critique_over_the_bound_is_only_tolerant():
    reply = contract([1], ["x" * (CRITIQUE_MAX_CHARS + 1)], ["Factuality"])
    assert parse_ratings(reply, ["Factuality"]).status == "tolerant"
    assert parse_ratings(contract([1], ["x" * 50], ["Factuality"]), ["Factuality"], max_critique_chars=40).status == (
        "tolerant"
    )


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "   ",
        None,
        "The answer is 42 because 6 times 7 is 42.",
        contract([1, 0, 2]),  # out of range
        contract([1, 0, 5]).replace("5", "10"),
        json.dumps(
            {"Logical Correctness": {"critique": "x", "rating": 1}, "Factuality": {"critique": "y", "rating": 0}}
        ),
        json.dumps({a: {"critique": "x", "rating": True} for a in THREE}),  # booleans are not ratings
        json.dumps({a: {"critique": "x", "rating": 0.5} for a in THREE}),
        json.dumps({a: {"critique": "x", "rating": "good"} for a in THREE}),
        json.dumps({a: {"critique": "x"} for a in THREE}),
        "Logical Correctness: 1\nFactuality: 4\nReadability: 0",
        "Logical Correctness: 1\nFactuality: 3/5\nReadability: 0",
        "Logical Correctness: 1\nFactuality: 0",  # Readability missing
        '{"Logical Correctness": {"critique": "x", "rating": 1}, "Factuality": {"critique": "y", "ra',  # truncated
    ],
)
def test_unreadable_replies_are_none(reply):
    assert parse_ratings(reply, THREE) is None


def test_strict_rejects_extra_keys_but_tolerant_reads_them():
    obj = {a: {"critique": "x", "rating": 1, "confidence": "high"} for a in THREE}
    assert parse_ratings(json.dumps(obj), THREE).status == "tolerant"
    obj = {**{a: {"critique": "x", "rating": 1} for a in THREE}, "Harmlessness": {"critique": "x", "rating": 1}}
    assert parse_ratings(json.dumps(obj), THREE).status == "tolerant"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        (-1, -1),
        (0, 0),
        ("+1", 1),
        (" -1 ", -1),
        ("1.0", 1),
        (1.0, 1),
        (True, None),
        (2, None),
        ("one", None),
        (None, None),
        (0.5, None),
    ],
)
def test_as_rating(value, expected):
    assert as_rating(value) == expected


def test_selection_strict():
    picked = ["Comprehension", "Completeness", "Readability"]
    assert parse_selection(json.dumps({"aspects": picked}), 3) == picked


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            '```json\n{"aspects": ["comprehension", "logical_correctness", "READABILITY"]}\n```',
            ["Comprehension", "Logical Correctness", "Readability"],
        ),
        (
            '["Factuality", "Completeness", "Insightfulness", "Readability"]',
            ["Factuality", "Completeness", "Insightfulness"],
        ),
        (
            '{"aspects": ["Factuality", "Creativity", "Completeness", "Harmlessness"]}',
            ["Factuality", "Completeness", "Harmlessness"],
        ),
        (
            "The most important are Harmlessness, then Comprehension, and finally Metacognition.",
            ["Harmlessness", "Comprehension", "Metacognition"],
        ),
    ],
)
def test_selection_tolerant(reply, expected):
    assert parse_selection(reply, 3) == expected


@pytest.mark.parametrize(
    "reply",
    [
        '{"aspects": ["Factuality", "Factuality", "Readability"]}',  # duplicates leave two
        '{"aspects": ["Factuality", "Readability"]}',
        "I would pick Factuality and Readability.",
        "All of them: " + ", ".join(ASPECT_NAMES),  # not a choice
        "",
        "no idea",
    ],
)
def test_selection_failures(reply):
    assert parse_selection(reply, 3) is None


aspect_lists = st.lists(st.sampled_from(ASPECT_NAMES), min_size=1, max_size=8, unique=True)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), aspects=aspect_lists)
def test_contract_round_trip(data, aspects):
    ratings = data.draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=len(aspects), max_size=len(aspects)))
    critiques = data.draw(st.lists(st.text(max_size=CRITIQUE_MAX_CHARS), min_size=len(aspects), max_size=len(aspects)))
    parsed = parse_ratings(dump_ratings(aspects, ratings, critiques), aspects)
    assert parsed is not None
    assert parsed.status == "strict"
    assert (parsed.aspects, parsed.ratings, parsed.critiques) == (aspects, ratings, critiques)


@settings(max_examples=100, deadline=None)
@given(aspects=aspect_lists)
def test_selection_round_trip(aspects):
    assert parse_selection(json.dumps({"aspects": aspects}), len(aspects)) == aspects
