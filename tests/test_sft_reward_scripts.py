"""Dataset mixtures of recipes/sft.py and recipes/reward.py (`rlrf_hub.mixtures`): every layout becomes the rows the
trainers read, and an RLRF run's stages become examples in exactly the loop's judge and reflection prompts."""

from __future__ import annotations

import json

import pytest

from rlrf_hub.feedback.templates import dump_ratings, rating_messages, reflection_messages, selection_messages
from rlrf_hub.mixtures import MixtureError, load_mixture, parse_transcript
from rlrf_hub.schemas import FEATURES, to_dataset


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_hh_rlhf_transcripts_split_into_alternating_turns(data_dir):
    row = json.loads((data_dir / "prompts/hh_rlhf_helpful_base_test.jsonl").open().readline())
    turns = parse_transcript(row["chosen"])
    assert [t["role"] for t in turns] == ["user", "assistant"] * (len(turns) // 2)
    assert turns[0]["content"] == row["prompt"]
    assert turns[-1]["content"] == row["chosen"].rsplit("\n\nAssistant:", 1)[1].strip()
    assert parse_transcript("no speakers here") == []


def test_sft_layouts_become_prompt_and_completion(tmp_path):
    sharegpt = write_jsonl(
        tmp_path / "sharegpt.jsonl",
        [
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
            {"conversations": [{"from": "gpt", "value": "an answer without a question"}]},
        ],
    )
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"task": {"text": "Add 2 and 3."}, "outputs": ["5", "five"]}])
    hh = write_jsonl(
        tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: A?\n\nAssistant: B.\n\nHuman: C?\n\nAssistant: D."}]
    )
    mixture = [
        {"path": sharegpt, "format": "messages", "fields": {"messages": "conversations"}},
        {"path": tasks, "format": "prompt_response", "fields": {"prompt": "task.text", "response": "outputs.1"}},
        {"path": hh, "format": "transcript", "fields": {"text": "chosen"}},
    ]
    rows = list(load_mixture(mixture, "sft"))
    assert rows[0] == {
        "prompt": [{"role": "user", "content": "Hi"}],
        "completion": [{"role": "assistant", "content": "Hello!"}],
    }
    assert (
        rows[1]["prompt"] == [{"role": "user", "content": "Add 2 and 3."}]
        and rows[1]["completion"][0]["content"] == "five"
    )
    assert [m["content"] for m in rows[2]["prompt"]] == ["A?", "B.", "C?"] and rows[2]["completion"][0][
        "content"
    ] == "D."
    assert len(rows) == 3, "a conversation with no user turn before the answer is left out"


def test_fractions_share_the_mixture_without_oversampling(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"a{i}", "response": "x"} for i in range(10)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": f"b{i}", "response": "y"} for i in range(4)])
    mixture = [
        {"path": a, "format": "prompt_response", "fraction": 0.5},
        {"path": b, "format": "prompt_response", "fraction": 0.5},
    ]
    prompts = [row["prompt"][0]["content"] for row in load_mixture(mixture, "sft")]
    assert prompts == ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"]
    limited = [{"path": a, "format": "prompt_response", "limit": 3}]
    assert len(load_mixture(limited, "sft")) == 3


def test_preference_layouts_order_chosen_before_rejected(tmp_path):
    labelled = write_jsonl(
        tmp_path / "shp.jsonl",
        [
            {"history": "Q1", "A": "good", "B": "bad", "labels": 1},
            {"history": "Q2", "A": "bad", "B": "good", "labels": 0},
        ],
    )
    scored = write_jsonl(
        tmp_path / "webgpt.jsonl",
        [
            {"question": {"full_text": "Q3"}, "a0": "bad", "a1": "good", "s0": -1.0, "s1": 1.0},
            {"question": {"full_text": "Q4"}, "a0": "same", "a1": "same score", "s0": 0.0, "s1": 0.0},
        ],
    )
    chats = write_jsonl(
        tmp_path / "ultrafeedback.jsonl",
        [
            {
                "chosen": [{"role": "user", "content": "Q5"}, {"role": "assistant", "content": "good"}],
                "rejected": [{"role": "user", "content": "Q5"}, {"role": "assistant", "content": "bad"}],
            }
        ],
    )
    mixture = [
        {
            "path": labelled,
            "format": "pairwise",
            "fields": {"prompt": "history", "response_a": "A", "response_b": "B", "label": "labels"},
        },
        {
            "path": scored,
            "format": "pairwise",
            "fields": {
                "prompt": "question.full_text",
                "response_a": "a0",
                "response_b": "a1",
                "score_a": "s0",
                "score_b": "s1",
            },
        },
        {"path": chats, "format": "preference"},
    ]
    rows = list(load_mixture(mixture, "preference"))
    assert [r["chosen"][0]["content"] for r in rows] == ["Q1", "Q2", "Q3", "Q5"], "the tie of Q4 is dropped"
    assert all(r["chosen"][-1]["content"] == "good" and r["rejected"][-1]["content"] == "bad" for r in rows)


def test_a_missing_column_names_the_source_and_field(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(MixtureError, match=r"dataset_mixture\[0\]\.fields: row 0 of .* has no column 'prompt'"):
        load_mixture([{"path": data, "format": "prompt_response"}], "sft")
    with pytest.raises(MixtureError, match=r"dataset_mixture\[0\]\.path: .*missing.jsonl does not exist"):
        load_mixture([{"path": str(tmp_path / "missing.jsonl"), "format": "prompt_response"}], "sft")


def _publish(folder, stage, rows):
    (folder / "data").mkdir(parents=True)
    to_dataset(stage, rows).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n")


def _response(prompt_id, response_id, origin, response, messages):
    return {
        "prompt_id": prompt_id,
        "response_id": response_id,
        "iteration": 0,
        "origin": origin,
        "sample_index": 0,
        "parent_id": None,
        "task": "math",
        "prompt": "What is 6 x 7?",
        "messages": messages,
        "response": response,
        "num_tokens": 3,
        "finish_reason": "stop",
        "policy": "tiny",
    }


def _feedback(response_id, aspects, ratings, critiques, status, task="math", prompt_id="p1"):
    row = {name: None for name in FEATURES["feedback"]}
    row.update(
        prompt_id=prompt_id,
        response_id=response_id,
        iteration=0,
        origin="refinement" if "-r" in response_id else "candidate",
        task=task,
        aspects=aspects,
        ratings=ratings,
        critiques=critiques,
        critique="",
        raw_feedback="",
        parse_status=status,
        parse_attempts=1,
        is_positive=all(r == 1 for r in ratings),
    )
    return row


@pytest.fixture
def run_folder(tmp_path):
    """A finished iteration of an RLRF run in `output_dir` layout: one math prompt, a candidate, a refinement."""
    question, reference = "What is 6 x 7?", "6 x 7 = 42\n#### 42"
    asked = [{"role": "user", "content": question}]
    reflection = reflection_messages(question, "It is 48.", "Logical Correctness (-1): 6 x 7 is 42, not 48.")
    root = tmp_path / "run"
    _publish(
        root / "prompts",
        "prompts",
        [{"prompt_id": "p1", "prompt": question, "task": "math", "reference": reference, "source": "test"}],
    )
    _publish(
        root / "iter-0" / "candidates", "candidates", [_response("p1", "p1-i0-c0", "candidate", "It is 48.", asked)]
    )
    _publish(
        root / "iter-0" / "refinements",
        "refinements",
        [_response("p1", "p1-i0-r0", "refinement", "6 x 7 = 42.", reflection)],
    )
    _publish(
        root / "iter-0" / "feedback",
        "feedback",
        [
            _feedback("p1-i0-c0", ["Logical Correctness"], [-1], ["6 x 7 is 42, not 48."], "strict"),
            _feedback("p1-i0-r0", ["Logical Correctness"], [1], ["Correct and shown."], "tolerant"),
        ],
    )
    return root, question, reference, reflection


def test_a_runs_stages_become_examples_in_the_loops_own_prompts(run_folder):
    root, question, reference, reflection = run_folder
    feedback = list(load_mixture([{"path": str(root), "format": "rlrf_feedback"}], "sft"))
    assert feedback[0]["prompt"] == rating_messages(question, "It is 48.", ["Logical Correctness"], reference)
    reply = feedback[0]["completion"][0]["content"]
    assert reply == dump_ratings(["Logical Correctness"], [-1], ["6 x 7 is 42, not 48."])
    assert json.loads(reply)["Logical Correctness"]["rating"] == -1 and len(feedback) == 2
    refinements = list(load_mixture([{"path": str(root), "format": "rlrf_refinements"}], "sft"))
    assert refinements == [{"prompt": reflection, "completion": [{"role": "assistant", "content": "6 x 7 = 42."}]}]


def test_selection_examples_come_from_general_prompts_only(run_folder):
    root, *_ = run_folder
    with pytest.raises(MixtureError, match="gave no usable row"):
        load_mixture([{"path": str(root), "format": "rlrf_selection"}], "sft")
    rows = [
        _feedback("p1-i0-c0", ["Insightfulness", "Factuality"], [1, 0], ["a", "b"], "strict", task="general"),
    ]
    (root / "iter-0" / "feedback" / "data" / "train-00000-of-00001.parquet").unlink()
    to_dataset("feedback", rows).to_parquet(
        str(root / "iter-0" / "feedback" / "data" / "train-00000-of-00001.parquet")
    )
    selection = list(load_mixture([{"path": str(root), "format": "rlrf_selection"}], "sft"))
    assert selection[0]["prompt"] == selection_messages("What is 6 x 7?", 2)
    assert json.loads(selection[0]["completion"][0]["content"]) == {"aspects": ["Insightfulness", "Factuality"]}
