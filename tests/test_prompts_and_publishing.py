from __future__ import annotations

import json

import pytest
from datasets import load_dataset

from rlrf_hub.config import PromptSource, RecipeError
from rlrf_hub.ids import prompt_id, response_id
from rlrf_hub.publishing import FolderPublisher, StageCheckpoint
from rlrf_hub.schemas import PROMPTS
from rlrf_hub.stages.prompts import build_prompts


def test_prompt_id_ignores_cosmetic_whitespace():
    assert prompt_id("What is  2+2?\n") == prompt_id(" What is 2+2?")
    assert prompt_id("What is 2+2?") != prompt_id("What is 2+3?")
    assert response_id(prompt_id("x"), 1, "refinement", 3).endswith("-i1-r3")
    with pytest.raises(ValueError):
        response_id("p", 0, "other", 0)


def test_sources_give_tasks_references_and_no_duplicates(data_dir, tmp_path):
    duplicate = tmp_path / "dup.jsonl"
    first = json.loads((data_dir / "gsm8k/train.jsonl").read_text().splitlines()[0])
    duplicate.write_text(json.dumps({"question": first["question"] + "  ", "answer": "#### 1"}) + "\n")
    prompts = build_prompts(
        [
            PromptSource(
                path=str(data_dir / "gsm8k/train.jsonl"),
                task="math",
                prompt_field="question",
                reference_field="answer",
                limit=3,
            ),
            PromptSource(path=str(duplicate), task="math", prompt_field="question", reference_field="answer"),
            PromptSource(
                path=str(data_dir / "factscore/bio_prompts.jsonl"),
                task="bio",
                prompt_template="Tell me a bio of {topic}.",
                reference_file=str(data_dir / "factscore/wikipedia/wikipedia_reference_text.json"),
                entity_field="topic",
                require_reference=True,
                max_reference_chars=500,
                limit=2,
            ),
        ]
    )
    assert [p["task"] for p in prompts] == ["math"] * 3 + ["bio"] * 2
    assert prompts[0]["reference"].rstrip().endswith("#### 72")
    assert all(p["prompt"].startswith("Tell me a bio of ") for p in prompts[3:])
    assert all(0 < len(p["reference"]) <= 500 for p in prompts[3:])
    assert len({p["prompt_id"] for p in prompts}) == len(prompts)


def test_missing_template_field_names_the_source(data_dir):
    with pytest.raises(RecipeError, match=r"prompt_sources\[0\].*'person'"):
        build_prompts(
            [
                PromptSource(
                    path=str(data_dir / "factscore/bio_prompts.jsonl"),
                    task="bio",
                    prompt_template="Tell me a bio of {person}.",
                )
            ]
        )


def _prompt_rows(n: int) -> list[dict]:
    return [
        {"prompt_id": prompt_id(f"q{i}"), "prompt": f"q{i}", "task": "general", "reference": None, "source": "test"}
        for i in range(n)
    ]


def test_published_stage_loads_with_load_dataset_and_has_a_card(tmp_path):
    publisher = FolderPublisher(tmp_path)
    rows = _prompt_rows(5)
    lineage = {"run": "r", "stage": "prompts", "iteration": 0, "counts": {"rows": 5}}
    published = publisher.publish_dataset("prompts", 0, rows, lineage, "rows")
    dataset = load_dataset(published.location, split="train")
    assert dataset.features == PROMPTS
    assert dataset["prompt_id"] == [r["prompt_id"] for r in rows]
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(f"{published.location}/README.md")
    assert card.data.rlrf["stage"] == "prompts"
    assert card.data.configs[0]["data_files"][0]["path"].startswith("data/train-")
    assert publisher.find("prompts", 0).revision == published.revision
    entries = json.loads((tmp_path / "published.json").read_text())
    assert entries == [
        {
            "kind": "dataset",
            "name": "prompts",
            "iteration": 0,
            "location": published.location,
            "revision": published.revision,
            "content_key": None,
        }
    ]


def test_two_folders_of_one_stage_never_share_a_cache(tmp_path):
    """`datasets` caches a local folder by its card's patterns; each publication must load its own rows."""
    loaded = []
    for index in range(2):
        publisher = FolderPublisher(tmp_path / f"run{index}")
        rows = _prompt_rows(index + 2)
        published = publisher.publish_dataset(
            "prompts", 0, rows, {"run": "r", "stage": "prompts", "iteration": 0}, "rows"
        )
        loaded.append(load_dataset(published.location, split="train")["prompt_id"])
    assert loaded == [[r["prompt_id"] for r in _prompt_rows(2)], [r["prompt_id"] for r in _prompt_rows(3)]]


def test_unpublished_stage_is_not_found(tmp_path):
    publisher = FolderPublisher(tmp_path)
    assert publisher.find("candidates", 0) is None
    (tmp_path / "iter-0" / "candidates").mkdir(parents=True)
    assert publisher.find("candidates", 0) is None


def test_checkpoint_survives_reopening(tmp_path):
    checkpoint = StageCheckpoint(tmp_path / "work", "prompts")
    rows = _prompt_rows(4)
    checkpoint.append(rows[:2])
    checkpoint.append(rows[2:3])
    reopened = StageCheckpoint(tmp_path / "work", "prompts")
    assert [r["prompt_id"] for r in reopened.rows()] == [r["prompt_id"] for r in rows[:3]]
    assert reopened.done("prompt_id") == {r["prompt_id"] for r in rows[:3]}
    assert not list((tmp_path / "work").glob("*.tmp"))
    reopened.clear()
    assert StageCheckpoint(tmp_path / "work", "prompts").rows() == []


def test_long_prompts_stop_the_run_or_are_dropped():
    from rlrf_hub.config import RecipeError
    from rlrf_hub.stages.prompts import check_prompt_lengths

    rows = [{"prompt_id": f"p{n}", "prompt": "w " * n, "source": "s.jsonl"} for n in (3, 12, 5)]

    def words(messages):
        return len(messages[0]["content"].split())

    with pytest.raises(RecipeError, match="max_prompt_tokens: prompt p12"):
        check_prompt_lengths(rows, words, max_tokens=10)
    assert [r["prompt_id"] for r in check_prompt_lengths(rows, words, 10, drop=True)] == ["p3", "p5"]
    assert [r["prompt_id"] for r in check_prompt_lengths(rows, words, 10, context=4, drop=True)] == ["p3"]


def test_a_template_that_does_not_fit_a_row_names_the_source(tmp_path):
    from rlrf_hub.config import PromptSource, RecipeError
    from rlrf_hub.stages.prompts import build_prompts

    data = tmp_path / "chats.jsonl"
    data.write_text('{"conversations": []}\n')
    source = PromptSource(path=str(data), task="general", prompt_template="{conversations[0][value]}")
    with pytest.raises(RecipeError, match=r"prompt_sources\[0\]\.prompt_template"):
        build_prompts([source])
