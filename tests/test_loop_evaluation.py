"""`eval_tasks` in a recipe: the loop evaluates M0 and M1 after training M1 and puts the results on M1's card."""

from __future__ import annotations

import pytest
from conftest import tiny_recipe, write_recipe
from huggingface_hub import ModelCard

from rlrf_hub.config import RecipeError, parse_recipe
from rlrf_hub.evaluation.results import EvaluationReport
from rlrf_hub.loop import run


def test_the_loop_evaluates_each_model_and_the_card_carries_the_results(tmp_path, data_dir, tiny_model, monkeypatch):
    values = tiny_recipe(
        data_dir,
        tmp_path / "out",
        num_iterations=1,
        eval_tasks="gsm8k,factscore,just_eval",
        eval_limit=1,
        eval_max_new_tokens=8,
        eval_knowledge_source=str(data_dir / "factscore/wikipedia/wikipedia_reference_text.json"),
        eval_gsm8k_data=str(data_dir / "gsm8k/test.jsonl"),
        eval_just_eval_data=str(data_dir / "just_eval/just_eval_instruct.jsonl"),
    )
    recipe = parse_recipe(["--config", str(write_recipe(tmp_path / "r.yaml", **values))])
    run(recipe)
    adapter = tmp_path / "out" / "adapters" / "M1"
    m0, m1 = (EvaluationReport.load(adapter / "eval" / label) for label in ("M0", "M1"))
    assert (m0.iteration, m0.adapter) == (0, None) and m1.iteration == 1 and m1.adapter == str(adapter)
    for report in (m0, m1):
        tasks = {result.task for result in report.results}
        assert tasks == {"gsm8k", "factscore", "just_eval"}
        judged = [result for result in report.results if result.task != "gsm8k" and result.judge]
        assert judged and all("embedded:tiny" in result.judge for result in judged), "the judge is the feedback model"
    card = ModelCard.load(adapter / "README.md")
    names = {(result.dataset_name, result.metric_type) for result in card.data.eval_results}
    assert any("gsm8k" in (name or "").lower() for name, _ in names)
    assert card.data.rlrf["model_name"] == "M1", "the lineage block survives the results"
    assert (tmp_path / "out" / "eval" / "M1" / "gsm8k" / "items").is_dir(), "per-item outputs are kept"

    from rlrf_hub.backends.transformers_backend import TransformersBackend

    def refuse(self, *args, **kwargs):
        raise AssertionError("results already on the card were computed again")

    monkeypatch.setattr(TransformersBackend, "generate", refuse)
    run(recipe)


def test_factscore_without_a_knowledge_source_is_refused_before_any_work(tmp_path, data_dir):
    values = tiny_recipe(data_dir, tmp_path / "out", eval_tasks=["factscore"])
    with pytest.raises(RecipeError, match="eval_knowledge_source"):
        parse_recipe(["--config", str(write_recipe(tmp_path / "r.yaml", **values))])
