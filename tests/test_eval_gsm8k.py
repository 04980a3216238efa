import json
import math

import pytest

from rlrf_hub.evaluation.gsm8k import accuracy_result, extract_answer, is_correct, load_gsm8k
from rlrf_hub.evaluation.stats import mean_interval, wilson_interval


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Janet sells 9 eggs.\nShe makes 9 * 2 = $18 every day.\n#### 18", "18"),
        ("#### 1,000", "1000"),
        ("The answer is 1,200.", "1200"),
        ("The answer is $18.00", "18"),
        ("It costs $1,234.50 in total", "1234.5"),
        ("So the final result is \\boxed{42}.", "42"),
        ("\\boxed{\\$42}", "42"),
        ("The answer is $\\boxed{1,200}$.", "1200"),
        ("The answer is -5.", "-5"),
        ("The temperature fell to −3 degrees", "-3"),
        ("She lost -$5 on the deal", "-5"),
        ("So she makes 18 dollars per day.", "18"),
        ("She pays 20% of $50, which is $10.", "10"),
        ("The answer is 25%.", "25"),
        ("The answer is 3.5 hours.", "3.5"),
        ("The answer is 5 km/h.", "5"),
        ("The total is 12.50 USD.", "12.5"),
        ("answer: -0.5", "-0.5"),
        (".5 of the cake is left", "0.5"),
        ("10.0", "10"),
        ("1,000,000", "1000000"),
        ("It costs 12 + 6 = 18", "18"),
        ("Answer: 7 apples", "7"),
        ("The answer is: 7.", "7"),
        ("The final answer is: **42**", "42"),
        ("the answer is **$1,080**.", "1080"),
        ("The answer is 5 - 3 = 2", "2"),
        ("The answer is 6,", "6"),
        ("He has 5 apples. Then he buys 3 more, so 8.", "8"),
        ("In 2023, he had 4 cats", "4"),
        ("The answer is 18. Check: 16 - 3 - 4 = 9, 9*2=18", "18"),
        ("So the answer is 15 minutes.\n\nLet me know if you want 2 more examples!", "15"),
        ("Therefore, Janet makes $18 every day.", "18"),
        ("3 x 4 = 12 cookies.", "12"),
        ("Each gets 3/4 of a pizza", "0.75"),
        ("Each gets 2/3 of a pizza", "2/3"),
        ("The answer is 1/2.", "0.5"),
        ("No numbers at all here.", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("response", "reference", "correct"),
    [
        ("The answer is $18.00.", "18", True),
        ("#### 18", "18", True),
        ("The answer is 17.", "18", False),
        ("I cannot solve this.", "18", False),
        ("The answer is 0.50", "1/2", True),
        ("Total: 1,000", "1000", True),
    ],
)
def test_is_correct(response, reference, correct):
    assert is_correct(response, reference) is correct


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)


def test_wilson_interval_contains_proportion_and_narrows():
    for n in (1, 7, 50, 1319):
        for successes in {0, n // 3, n}:
            low, high = wilson_interval(successes, n)
            assert 0 <= low <= successes / n <= high <= 1
    assert (
        wilson_interval(50, 100)[1] - wilson_interval(50, 100)[0]
        > wilson_interval(500, 1000)[1] - wilson_interval(500, 1000)[0]
    )


def test_wilson_interval_rejects_bad_counts():
    with pytest.raises(ValueError, match="n must be positive"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)


def test_mean_interval():
    assert mean_interval([3.0]) is None
    low, high = mean_interval([1.0, 2.0, 3.0, 4.0])
    half = 1.959963984540054 * math.sqrt(5 / 3) / 2
    assert (low, high) == pytest.approx((2.5 - half, 2.5 + half))


def test_accuracy_result_is_percent_with_interval():
    result = accuracy_result([True, False, True, True], {"dataset_id": "openai/gsm8k", "split": "test"})
    assert result.task == "gsm8k" and result.metric == "accuracy"
    assert result.value == 75.0 and result.n == 4 and result.judge is None
    assert result.ci_low < 75.0 < result.ci_high <= 100.0
    assert result.dataset_id == "openai/gsm8k"


def test_load_gsm8k_from_shared_file(data_dir):
    items, provenance = load_gsm8k(data_dir / "gsm8k/test.jsonl", limit=3)
    assert len(items) == 3
    assert items[0].answer == "18" and "Janet" in items[0].question
    assert provenance["dataset_revision"].startswith("sha256:")


def test_load_gsm8k_names_missing_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "solution": "#### 2"}) + "\n")
    with pytest.raises(ValueError, match="missing field 'answer'"):
        load_gsm8k(path)
    path.write_text(json.dumps({"question": "1+1?", "answer": "two"}) + "\n")
    with pytest.raises(ValueError, match="states no final number"):
        load_gsm8k(path)
