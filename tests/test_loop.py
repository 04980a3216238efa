"""The whole loop on the tiny model: every stage published, lineage joined, and resumable after a crash."""

from __future__ import annotations

import json

import pytest
from conftest import Crash, crash_generate_on_call, tiny_recipe, write_recipe
from datasets import load_dataset

from rlrf_hub.cli import main
from rlrf_hub.config import parse_recipe
from rlrf_hub.loop import run

STAGES = ("candidates", "feedback", "refinements", "pairs")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir, tiny_model):
    root = tmp_path_factory.mktemp("loop")
    path = write_recipe(root / "recipe.yaml", **tiny_recipe(data_dir, root / "out"))
    assert main(["run", "--config", str(path)]) == 0
    return root / "out", path


def _load(out, stage, t):
    return load_dataset(str(out / f"iter-{t}" / stage), split="train")


def test_every_stage_of_every_iteration_is_published(finished_run):
    out, _ = finished_run
    prompts = load_dataset(str(out / "prompts"), split="train")
    assert set(prompts["task"]) == {"math", "general", "bio"}
    for t in range(2):
        candidates, refinements = _load(out, "candidates", t), _load(out, "refinements", t)
        feedback, pairs = _load(out, "feedback", t), _load(out, "pairs", t)
        assert len(candidates) == 3 * len(prompts)
        assert set(candidates["prompt_id"]) == set(prompts["prompt_id"])
        assert len(refinements) % 2 == 0 and set(refinements["parent_id"]) <= set(candidates["response_id"])
        rated = set(candidates["response_id"]) | set(refinements["response_id"])
        assert sorted(feedback["response_id"]) == sorted(rated), "every response gets exactly one feedback row"
        assert set(feedback["origin"]) == {"candidate", "refinement"}
        positives = {r["response_id"] for r in feedback if r["is_positive"]}
        assert len(pairs) > 0
        assert set(pairs["chosen_id"]) <= positives
        assert not set(pairs["rejected_id"]) & positives
        assert (out / "adapters" / f"M{t + 1}" / "adapter_config.json").is_file()
        assert not (out / f"iter-{t}" / ".work").exists(), "checkpoints go once the iteration is published"


def test_math_feedback_comes_from_the_verifier_and_flat_columns_match(finished_run):
    out, _ = finished_run
    for row in _load(out, "feedback", 0):
        if row["task"] == "math":
            assert row["parse_status"] == "verifier" and row["aspects"] == ["Logical Correctness"]
        for aspect, rating in zip(row["aspects"], row["ratings"], strict=True):
            assert row["rating_" + aspect.lower().replace(" ", "_")] == rating


def test_cards_carry_lineage_back_to_the_prompts(finished_run):
    from huggingface_hub import DatasetCard, ModelCard

    out, _ = finished_run
    published = {(e["kind"], e["name"], e["iteration"]): e for e in json.loads((out / "published.json").read_text())}
    pairs_card = DatasetCard.load(out / "iter-1" / "pairs" / "README.md").data.rlrf
    assert pairs_card["policy"]["adapter"] == str(out / "adapters" / "M1")
    assert pairs_card["parents"][0]["revision"] == published[("dataset", "feedback", 1)]["revision"]
    adapter_card = ModelCard.load(out / "adapters" / "M2" / "README.md")
    assert adapter_card.data.rlrf["parents"][0]["revision"] == published[("dataset", "pairs", 1)]["revision"]
    assert adapter_card.data.base_model == "embedded:tiny"
    feedback_card = DatasetCard.load(out / "iter-0" / "feedback" / "README.md").data.rlrf
    assert 0.0 <= feedback_card["parse_failure_rate"] <= 1.0
    assert feedback_card["rubric_sha256"]


def test_lineage_walks_from_the_last_adapter_back_to_the_prompts(finished_run, capsys):
    out, _ = finished_run
    assert main(["lineage", str(out / "adapters" / "M2")]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.strip().split(":")[0] for line in lines]
    assert names[0] == "M2 (iteration 1)"
    for expected in (
        "pairs (iteration 1)",
        "feedback (iteration 1)",
        "candidates (iteration 1)",
        "M1 (iteration 0)",
        "pairs (iteration 0)",
        "candidates (iteration 0)",
        "refinements (iteration 0)",
    ):
        assert expected in names
    assert sum(name.startswith("prompts") for name in names) == 1
    assert main(["lineage", str(out / "missing")]) == 2


def test_rerunning_a_finished_run_recomputes_nothing(finished_run, capsys):
    out, path = finished_run
    before = (out / "published.json").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    assert main(["run", "--config", str(path)]) == 0
    assert (out / "published.json").read_text() == before
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == stamps


def test_a_crashed_run_resumes_without_duplicates(tmp_path, data_dir, tiny_model, monkeypatch):
    """Fault injection: the backend dies on its third call; the rerun continues from the checkpoint."""
    from rlrf_hub.backends.transformers_backend import TransformersBackend

    settings = {"generation_batch_size": 2, "num_iterations": 1}
    crashed = parse_recipe(
        ["--config", str(write_recipe(tmp_path / "a.yaml", **tiny_recipe(data_dir, tmp_path / "crashed", **settings)))]
    )
    clean = parse_recipe(
        ["--config", str(write_recipe(tmp_path / "b.yaml", **tiny_recipe(data_dir, tmp_path / "clean", **settings)))]
    )
    original = TransformersBackend.generate
    crash_generate_on_call(monkeypatch, 3)
    with pytest.raises(Crash):
        run(crashed)
    parts = list((tmp_path / "crashed" / "iter-0" / ".work" / "candidates").glob("part-*.parquet"))
    assert len(parts) == 2, "two chunks were checkpointed before the crash"
    monkeypatch.setattr(TransformersBackend, "generate", original)
    run(crashed)
    run(clean)
    resumed = _load(tmp_path / "crashed", "candidates", 0)
    reference = _load(tmp_path / "clean", "candidates", 0)
    assert len(set(resumed["response_id"])) == len(resumed)
    assert sorted(zip(resumed["response_id"], resumed["response"], strict=True)) == sorted(
        zip(reference["response_id"], reference["response"], strict=True)
    ), "a resumed stage gives the rows of an uninterrupted one"
    assert not (tmp_path / "crashed" / "iter-0" / ".work" / "candidates").exists()


def test_rs_then_reward_only_with_a_reward_model(tmp_path, data_dir, tiny_model):
    """RS (SFT on positives) trains M1; the reward-only baseline trains M2 without any judge call."""
    from test_reward import _save_reward_model

    reward_model = _save_reward_model(tmp_path / "rm")
    recipe = tiny_recipe(
        data_dir,
        tmp_path / "out",
        reward_model=str(reward_model),
        pairing="rs,reward_only",
        reference_model="previous",
    )
    summaries = run(parse_recipe(["--config", str(write_recipe(tmp_path / "r.yaml", **recipe))]))
    out = tmp_path / "out"
    rs_pairs, baseline = _load(out, "pairs", 0), _load(out, "pairs", 1)
    assert set(rs_pairs["pairing"]) == {"rs"} and all(r == [] for r in rs_pairs["rejected"])
    assert set(baseline["pairing"]) == {"reward_only"}
    feedback = _load(out, "feedback", 1)
    assert all(row["reward"] is not None for row in feedback)
    assert set(feedback["origin"]) == {"candidate"}, "the baseline refines nothing"
    assert all(row["judge"] in (None, "") for row in feedback), "the baseline asks no judge"
    assert summaries[1].refinements == 0 and summaries[1].pairs == len(baseline)
    assert (out / "adapters" / "M2" / "adapter_config.json").is_file()


def test_lineage_lists_an_unreachable_parent_instead_of_failing(tmp_path):
    from huggingface_hub import DatasetCard, DatasetCardData

    from rlrf_hub.lineage import walk

    (tmp_path / "pairs").mkdir()
    lineage = {
        "stage": "pairs",
        "iteration": 0,
        "parents": [{"stage": "feedback", "location": str(tmp_path / "gone"), "revision": "abc"}],
    }
    DatasetCard.from_template(DatasetCardData(rlrf=lineage), template_str="---\n{{ card_data }}\n---\n").save(
        tmp_path / "pairs" / "README.md"
    )
    nodes = walk(str(tmp_path / "pairs"))
    assert [(n.stage, n.depth) for n in nodes] == [("pairs", 0), ("(card not reachable)", 1)]
