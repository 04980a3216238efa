import json
from pathlib import Path

import evaluate
import pytest

from rlrf_hub import metrics


def test_path_points_at_module_folders():
    for name in metrics.METRICS:
        folder = Path(metrics.path(name))
        assert (folder / f"{name}.py").is_file()
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.path("bleu")


def test_gsm8k_accuracy_module():
    module = evaluate.load(metrics.path("gsm8k_accuracy"))
    result = module.compute(
        predictions=["So the answer is $1,200.", "I think it is 7.", "The answer is 3.50"],
        references=["She earns 600 * 2 = 1200.\n#### 1200", "8", "3.5"],
    )
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["extracted"] == ["1200", "7", "3.5"]
    assert 0 < result["ci_low"] < 2 / 3 < result["ci_high"] < 1
    with pytest.raises(ValueError, match=r"references\[0\] states no final number"):
        module.compute(predictions=["1"], references=["no number"])


def test_factscore_module_matches_human_label_scoring(data_dir):
    from rlrf_hub.evaluation.factscore import human_summary, load_labeled

    responses = load_labeled(data_dir / "factscore/labeled/InstructGPT.jsonl")
    module = evaluate.load(metrics.path("factscore"))
    result = module.compute(
        predictions=[r.human_decisions() for r in responses], abstained=[r.abstained for r in responses]
    )
    summary = human_summary(responses)
    assert result["factscore"] == pytest.approx(summary.factscore / 100)
    assert result["factscore"] == pytest.approx(0.428, abs=0.002)
    assert result["factscore_length_penalized"] == pytest.approx(summary.factscore_length_penalized / 100)
    assert (result["num_scored"], result["num_abstained"], result["num_without_facts"]) == (181, 1, 1)


def test_just_eval_module(data_dir):
    rows = [json.loads(line) for line in open(data_dir / "just_eval/judgments_gpt4turbo_on_gpt-3.5-turbo-0301.jsonl")]
    rows = rows[:20] + rows[-5:]
    module = evaluate.load(metrics.path("just_eval"))
    replies = [row["judgment_raw"] for row in rows] + ["not a judgment"]
    result = module.compute(predictions=replies)
    helpfulness = [int(row["judgment"]["helpfulness"]["score"]) for row in rows[:20]]
    assert result["helpfulness"] == pytest.approx(sum(helpfulness) / 20)
    assert 1 <= result["safety"] <= 5 and 1 <= result["average"] <= 5
    assert result["num_failed"] == 1 and result["num_strict"] + result["num_tolerant"] == 25
    categories = ["regular"] * 20 + ["safety"] * 5 + ["regular"]
    assert module.compute(predictions=replies, categories=categories)["safety"] == pytest.approx(result["safety"])
