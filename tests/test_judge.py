import json
from pathlib import Path

import pytest

from rlrf_hub.aspects import ASPECT_KEYS, ASPECT_NAMES
from rlrf_hub.backends.base import Generation
from rlrf_hub.config import RLRFArguments
from rlrf_hub.feedback import judge
from rlrf_hub.feedback.judge import (
    GENERAL_FALLBACK,
    aspects_for,
    feedback_text,
    rate_responses,
    select_aspects,
    summarise,
    unrated_row,
)
from rlrf_hub.feedback.parsing import parse_ratings
from rlrf_hub.feedback.templates import (
    TEMPLATES_SHA256,
    critique_limit,
    dump_ratings,
    rating_messages,
    rating_schema,
    reflection_messages,
    selection_messages,
    selection_schema,
)
from rlrf_hub.feedback.verifier import VERIFIER_NAME
from rlrf_hub.schemas import FEEDBACK, to_dataset

GSM8K_SOLUTION = "She has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"
WIKI = "Ada Lovelace (1815-1852) was an English mathematician known for her notes on the Analytical Engine."
PICKED = ["Comprehension", "Completeness", "Readability"]


def prompt_row(pid, task, text, reference=""):
    return {"prompt_id": pid, "prompt": text, "task": task, "reference": reference, "source": "test"}


def response_row(pid, index, task, prompt, response, origin="candidate"):
    return {
        "prompt_id": pid,
        "response_id": f"{pid}-i0-{origin[0]}{index}",
        "iteration": 0,
        "origin": origin,
        "sample_index": index,
        "parent_id": None,
        "task": task,
        "prompt": prompt,
        "messages": [{"role": "user", "content": prompt}],
        "response": response,
        "num_tokens": 5,
        "finish_reason": "stop",
        "policy": "embedded:tiny",
    }


PROMPTS = {
    "g": prompt_row("g", "general", "Write a haiku about autumn."),
    "m": prompt_row("m", "math", "Tom has 3 apples and buys 4. How many now?", GSM8K_SOLUTION),
    "b": prompt_row("b", "bio", "Tell me a bio of Ada Lovelace.", WIKI),
}
ASPECTS = {"g": PICKED, "m": ["Logical Correctness"], "b": ["Factuality"]}


def responses():
    return [
        response_row("g", 0, "general", PROMPTS["g"]["prompt"], "Leaves fall slowly down"),
        response_row("m", 0, "math", PROMPTS["m"]["prompt"], "3 + 4 = 7. The answer is 7."),
        response_row("m", 1, "math", PROMPTS["m"]["prompt"], "He has 12 apples."),
        response_row("b", 0, "bio", PROMPTS["b"]["prompt"], "Ada Lovelace was a French painter."),
        response_row("g", 1, "general", PROMPTS["g"]["prompt"], "Autumn wind", origin="refinement"),
    ]


class ScriptedJudge:
    """Fault injection: replies come from `script(call_index, request)`; every call is recorded."""

    model_id = "fake/judge"
    revision = "abc123"
    adapter = None

    def __init__(self, script):
        self.script = script
        self.calls = []

    def generate(self, requests, params, desc=None):
        call = len(self.calls)
        self.calls.append((list(requests), params))
        return [[Generation(self.script(call, request), 7, "stop")] for request in requests]


def good_reply(request):
    aspects = list(request.json_schema["properties"]) if request.json_schema else _aspects_in(request)
    return dump_ratings(aspects, [1] * len(aspects), [f"fine on {a.lower()}" for a in aspects])


def _aspects_in(request):
    rubric = request.messages[-1]["content"].split("## Rubric", 1)[1].split("## Instruction", 1)[0]
    return [name for name in ASPECT_NAMES if f"\n{name}:" in rubric]


def args(**overrides):
    defaults = {"feedback_max_new_tokens": 128, "feedback_temperature": 0.7, "max_parse_retries": 2}
    return RLRFArguments(**{**defaults, **overrides})


def test_selection_schema_is_closed_and_enumerated():
    schema = selection_schema(3)
    assert schema["required"] == ["aspects"] and schema["additionalProperties"] is False
    items = schema["properties"]["aspects"]
    assert items["minItems"] == items["maxItems"] == 3
    assert items["items"]["enum"] == list(ASPECT_NAMES)


def test_rating_schema_every_property_required_and_enums():
    schema = rating_schema(PICKED, 120)
    assert list(schema["properties"]) == PICKED
    assert schema["required"] == PICKED and schema["additionalProperties"] is False
    for entry in schema["properties"].values():
        assert entry["required"] == ["critique", "rating"] and entry["additionalProperties"] is False
        assert entry["properties"]["rating"]["enum"] == [-1, 0, 1]
        assert entry["properties"]["critique"]["maxLength"] == 120
    with pytest.raises(KeyError):
        rating_schema(["Creativity"])


def test_schemas_compile_in_llguidance_without_warnings():
    from llguidance import LLMatcher

    for schema in (selection_schema(3), rating_schema(PICKED), rating_schema(list(ASPECT_NAMES), 40)):
        grammar = LLMatcher.grammar_from_json_schema(schema)
        assert LLMatcher.validate_grammar_with_warnings(grammar) == (False, [])


def test_critique_limit_fits_the_token_budget():
    assert critique_limit(1, 256) == 300
    assert critique_limit(3, 256) < 300
    assert critique_limit(8, 256) < critique_limit(3, 256)
    assert critique_limit(8, 64) == 20


def test_prompts_carry_what_the_judge_and_policy_need():
    selection = selection_messages("Plan a trip to Rome.", 3)[-1]["content"]
    assert "Plan a trip to Rome." in selection and "3" in selection
    assert all(name in selection for name in ASPECT_NAMES)
    rating = rating_messages("Q?", "A.", ["Factuality"], reference=WIKI)[-1]["content"]
    assert WIKI in rating and "Factuality" in rating and "Readability" not in rating
    assert "## Reference" not in rating_messages("Q?", "A.", ["Factuality"])[-1]["content"]
    reflection = reflection_messages("Q?", "A.", "Factuality (-1): wrong year")
    assert [m["role"] for m in reflection] == ["user", "assistant", "user"]
    assert reflection[1]["content"] == "A." and "wrong year" in reflection[2]["content"]
    assert len(TEMPLATES_SHA256) == 64


def test_aspects_for():
    assert aspects_for("math", "paper", 3) == ["Logical Correctness"]
    assert aspects_for("bio", "paper", 3) == ["Factuality"]
    assert aspects_for("general", "paper", 3) == list(GENERAL_FALLBACK[:3])
    assert aspects_for("general", "all", 3) == list(ASPECT_NAMES)
    assert aspects_for("math", "all", 3) == list(ASPECT_NAMES)


def test_rate_responses_retries_only_failed_rows_and_keeps_every_row():
    stubborn = "b-i0-c0"

    def script(call, request):
        text = request.messages[-1]["content"]
        if "Ada Lovelace was a French painter" in text:
            return "I think it is fine."  # never parses
        if call == 0 and "Autumn wind" in text:
            return "Sure! Here is my feedback: the haiku is short."  # parses on retry
        return good_reply(request)

    backend = ScriptedJudge(script)
    stats = {}
    rows = rate_responses(responses(), PROMPTS, ASPECTS, backend, args(), iteration=1, stats=stats)

    assert [r["response_id"] for r in rows] == [r["response_id"] for r in responses()]
    assert len(backend.calls) == 3  # first pass + 2 retries (the stubborn row)
    first, second, third = (len(requests) for requests, _ in backend.calls)
    assert (first, second, third) == (3, 2, 1)  # math rows never reach the judge
    seeds = [params.seed for _, params in backend.calls]
    assert len(set(seeds)) == 3
    assert all(request.json_schema is not None for request in backend.calls[0][0])

    by_id = {r["response_id"]: r for r in rows}
    assert by_id["g-i0-c0"]["parse_status"] == "strict" and by_id["g-i0-c0"]["parse_attempts"] == 1
    assert by_id["g-i0-r1"]["parse_status"] == "strict" and by_id["g-i0-r1"]["parse_attempts"] == 2
    failed = by_id[stubborn]
    assert failed["parse_status"] == "failed" and failed["parse_attempts"] == 3
    assert failed["raw_feedback"] == "I think it is fine."
    assert failed["mean_rating"] is None and failed["is_positive"] is False
    assert failed["aspects"] == ["Factuality"] and failed["ratings"] == [None]
    assert failed["rating_factuality"] is None and failed["critique"] == ""
    assert stats["judge_requests"] == 6 and stats["judge_retries"] == 3 and stats["judge_tokens"] == 42

    good = by_id["g-i0-c0"]
    assert good["aspects"] == PICKED and good["ratings"] == [1, 1, 1] and good["is_positive"] is True
    assert good["rating_comprehension"] == 1 and good["rating_factuality"] is None
    assert good["critique"].splitlines()[0] == "Comprehension (1): fine on comprehension"
    assert good["judge"] == "fake/judge" and good["judge_revision"] == "abc123"
    assert good["iteration"] == 1 and good["origin"] == "candidate" and good["reward"] is None
    assert by_id["g-i0-r1"]["origin"] == "refinement"

    dataset = to_dataset("feedback", rows)
    assert len(dataset) == len(rows)
    assert set(rows[0]) == set(FEEDBACK)
    assert dataset[3]["ratings"] == [None]


def test_verifier_rows():
    backend = ScriptedJudge(lambda call, request: good_reply(request))
    rows = rate_responses(responses()[1:3], PROMPTS, ASPECTS, backend, args(), iteration=0)
    assert backend.calls == []
    right, wrong = rows
    for row in rows:
        assert row["parse_status"] == "verifier" and row["judge"] == VERIFIER_NAME and row["judge_revision"] is None
        assert row["aspects"] == ["Logical Correctness"] and row["parse_attempts"] == 0
        assert parse_ratings(row["raw_feedback"], ["Logical Correctness"]).status == "strict"
    assert right["ratings"] == [1] and right["is_positive"] and right["mean_rating"] == 1.0
    assert wrong["ratings"] == [-1] and not wrong["is_positive"] and wrong["rating_logical_correctness"] == -1
    assert "12" in wrong["critique"] and "7" in wrong["critique"]
    to_dataset("feedback", rows)


def test_verifier_off_or_without_number_goes_to_judge():
    backend = ScriptedJudge(lambda call, request: good_reply(request))
    rows = rate_responses(responses()[1:2], PROMPTS, ASPECTS, backend, args(verifier_tasks=[]), iteration=0)
    assert rows[0]["parse_status"] == "strict" and len(backend.calls) == 1
    assert GSM8K_SOLUTION in backend.calls[0][0][0].messages[-1]["content"]  # reference shown to the judge
    prompts = {**PROMPTS, "m": prompt_row("m", "math", PROMPTS["m"]["prompt"], "Add them up.")}
    rows = rate_responses(responses()[1:2], prompts, ASPECTS, backend, args(), iteration=0)
    assert rows[0]["judge"] == "fake/judge"


def test_unconstrained_judge_gets_no_schema_and_tolerant_parsing():
    def script(call, request):
        names = _aspects_in(request)
        return "Review:\n" + "\n".join(f"{name}: 0 could be better" for name in names)

    backend = ScriptedJudge(script)
    rows = rate_responses(responses(), PROMPTS, ASPECTS, backend, args(constrained_decoding=False), iteration=0)
    assert all(request.json_schema is None for request in backend.calls[0][0])
    judged = [r for r in rows if r["parse_status"] != "verifier"]
    assert {r["parse_status"] for r in judged} == {"tolerant"}
    assert all(r["ratings"] == [0] * len(r["aspects"]) and r["mean_rating"] == 0.0 for r in judged)


def test_greedy_judge_samples_on_retry():
    backend = ScriptedJudge(lambda call, request: "nope")
    rows = rate_responses(responses()[:1], PROMPTS, ASPECTS, backend, args(feedback_temperature=0.0), iteration=0)
    assert rows[0]["parse_status"] == "failed"
    params = [p for _, p in backend.calls]
    assert params[0].do_sample is False and params[0].temperature == 0.0
    assert all(p.do_sample and p.temperature > 0 for p in params[1:])
    assert all(p.max_new_tokens == 128 for p in params)


def test_no_retries_when_disabled():
    backend = ScriptedJudge(lambda call, request: "nope")
    rows = rate_responses(responses()[:1], PROMPTS, ASPECTS, backend, args(max_parse_retries=0), iteration=0)
    assert len(backend.calls) == 1 and rows[0]["parse_attempts"] == 1


def test_select_aspects_retries_then_falls_back():
    prompts = [prompt_row(f"g{i}", "general", f"Instruction number {i}") for i in range(3)]

    def script(call, request):
        text = request.messages[-1]["content"]
        if "number 0" in text:
            return json.dumps({"aspects": PICKED})
        if "number 1" in text and call == 1:
            return json.dumps({"aspects": ["Harmlessness", "Factuality", "Metacognition"]})
        return json.dumps({"aspects": ["Factuality", "Factuality", "Factuality"]})  # duplicates never parse

    backend = ScriptedJudge(script)
    stats = {}
    chosen = select_aspects(prompts, backend, args(), stats=stats)
    assert chosen == {
        "g0": PICKED,
        "g1": ["Harmlessness", "Factuality", "Metacognition"],
        "g2": list(GENERAL_FALLBACK[:3]),
    }
    assert [len(requests) for requests, _ in backend.calls] == [3, 2, 1]
    assert backend.calls[0][0][0].json_schema == selection_schema(3)
    assert stats["selection_fallbacks"] == 1


def test_feedback_text_summarise_and_unrated_rows():
    backend = ScriptedJudge(
        lambda call, request: "nope" if "French" in request.messages[-1]["content"] else good_reply(request)
    )
    rows = rate_responses(responses(), PROMPTS, ASPECTS, backend, args(max_parse_retries=0), iteration=0)
    rows.append(unrated_row(responses()[0], 0))
    assert feedback_text(rows[0]) == rows[0]["critique"] and "Comprehension (1)" in feedback_text(rows[0])
    assert feedback_text(rows[3]) == judge.NO_FEEDBACK_TEXT
    stats = summarise(rows)
    assert stats["rows"] == 6
    assert (stats["strict"], stats["verifier"], stats["failed"], stats["unrated"]) == (2, 2, 1, 1)
    assert stats["parse_failure_rate"] == pytest.approx(1 / 3)
    assert stats["positives"] == 3
    to_dataset("feedback", rows)
    assert json.dumps(stats)


@pytest.mark.skipif(
    not (Path(__file__).resolve().parent.parent / "rlrf_hub/backends/transformers_backend.py").is_file(),
    reason="the transformers backend is not written yet",
)
def test_tiny_model_under_constrained_decoding_parses_strictly(tiny_model):
    from rlrf_hub.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend.from_pretrained("embedded:tiny", batch_size=8, device="cpu")
    settings = args(feedback_max_new_tokens=96, max_parse_retries=0, verifier_tasks=[])
    chosen = select_aspects([PROMPTS["g"]], backend, settings)
    assert len(chosen["g"]) == 3 and set(chosen["g"]) <= set(ASPECT_NAMES)
    rated = [responses()[i] for i in (0, 1, 3)]  # general (3 aspects), math and bio with references
    rows = rate_responses(rated, PROMPTS, {**ASPECTS, **chosen}, backend, settings, iteration=0)
    assert [r["parse_status"] for r in rows] == ["strict"] * len(rows), [r["raw_feedback"] for r in rows]
    assert [r["aspects"] for r in rows] == [chosen["g"], ["Logical Correctness"], ["Factuality"]]
    for row in rows:
        assert row["judge"] == "embedded:tiny" and row["parse_attempts"] == 1
        assert set(row["ratings"]) <= {-1, 0, 1} and len(row["ratings"]) == len(row["aspects"])
        assert row[f"rating_{ASPECT_KEYS[ASPECT_NAMES.index(row['aspects'][0])]}"] == row["ratings"][0]
    to_dataset("feedback", rows)
