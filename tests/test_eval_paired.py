"""Paired comparison of two models on the same items: exact McNemar, Tango's interval, and how the report and the
cards use them."""

import math
from statistics import NormalDist

import pytest

from rlrf_hub.cards.tables import paired_against, paired_table, plumbing_check
from rlrf_hub.evaluation.results import EvaluationReport, TaskResult
from rlrf_hub.evaluation.stats import (
    BINARY_METHOD,
    SCORE_METHOD,
    mcnemar_exact_p,
    paired_binary,
    paired_comparison,
    tango_interval,
)

Z = NormalDist().inv_cdf(0.975)


def outcomes(both: int, wins: int, losses: int, neither: int) -> tuple[list[bool], list[bool]]:
    """Model and baseline right/wrong lists with the given cell counts, in a shuffled-looking order."""
    cells = [(True, True)] * both + [(True, False)] * wins + [(False, True)] * losses + [(False, False)] * neither
    cells = cells[::2] + cells[1::2]
    return [m for m, _ in cells], [b for _, b in cells]


def test_exact_mcnemar_on_ten_against_two():
    """2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * (1 + 12 + 66) / 4096."""
    assert mcnemar_exact_p(10, 2) == pytest.approx(2 * 79 / 4096)
    assert round(mcnemar_exact_p(10, 2), 4) == 0.0386
    assert mcnemar_exact_p(2, 10) == mcnemar_exact_p(10, 2)
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(3, 3) == 1.0
    assert mcnemar_exact_p(6, 0) == pytest.approx(2 / 64)
    with pytest.raises(ValueError):
        mcnemar_exact_p(-1, 2)


def test_identical_outcomes_differ_by_nothing_with_an_honest_width():
    """No discordant item: difference 0, p = 1, and Tango's limits are +-z^2 / (n + z^2), not a point."""
    model, baseline = outcomes(120, 0, 0, 180)
    result = paired_binary(model, baseline)
    assert (result.difference, result.p_value, result.wins, result.losses) == (0.0, 1.0, 0, 0)
    bound = Z * Z / (300 + Z * Z)
    assert result.ci_low == pytest.approx(-bound, abs=1e-9) and result.ci_high == pytest.approx(bound, abs=1e-9)


def test_tango_interval_agrees_with_wald_on_a_large_sample():
    """Agresti's presidential-approval table (794, 150, 86, 570): difference 0.04, Wald interval (0.021, 0.059);
    at n = 1600 the score interval must be within a thousandth of it."""
    low, high = tango_interval(150, 86, 1600)
    wald = math.sqrt(150 + 86 - (150 - 86) ** 2 / 1600) / 1600
    assert low == pytest.approx(0.04 - Z * wald, abs=1e-3) and high == pytest.approx(0.04 + Z * wald, abs=1e-3)
    assert round(low, 3) == 0.021 and round(high, 3) == 0.059


def test_tango_interval_on_a_small_table_and_at_the_edges():
    """The airway example (1, 1, 7, 12) of Fagerland, Lydersen and Laake (2013): Tango -0.517 to -0.026. All
    discordant items against the model: the lower limit is -1."""
    low, high = tango_interval(1, 7, 21)
    assert (round(low, 3), round(high, 3)) == (-0.517, -0.026)
    low, high = tango_interval(0, 10, 10)
    assert low == -1.0 and -1 < high < 0
    assert tango_interval(10, 0, 10) == pytest.approx((-tango_interval(0, 10, 10)[1], 1.0))


def test_the_interval_and_the_test_agree_on_which_side_of_zero():
    for wins, losses in [(10, 2), (30, 12), (5, 5), (14, 20)]:
        model, baseline = outcomes(100, wins, losses, 200)
        result = paired_binary(model, baseline)
        assert result.ci_low < result.difference < result.ci_high or wins == losses
        excludes_zero = result.ci_low > 0 or result.ci_high < 0
        assert excludes_zero == (result.p_value < 0.05), (wins, losses, result)


def test_scores_use_the_paired_normal_approximation():
    model = [50.0, 60.0, 70.0, 80.0, 90.0, 40.0]
    baseline = [40.0, 55.0, 60.0, 75.0, 80.0, 40.0]
    result = paired_comparison(model, baseline)
    differences = [10, 5, 10, 5, 10, 0]
    mean = sum(differences) / 6
    error = math.sqrt(sum((d - mean) ** 2 for d in differences) / 5 / 6)
    assert result.method == SCORE_METHOD and result.difference == pytest.approx(mean)
    assert result.ci_low == pytest.approx(mean - Z * error) and result.ci_high == pytest.approx(mean + Z * error)
    assert result.p_value == pytest.approx(2 * (1 - NormalDist().cdf(mean / error)))
    assert paired_comparison([1, 0, 1], [0, 0, 1]).method == BINARY_METHOD
    with pytest.raises(ValueError, match="equal lengths"):
        paired_comparison([1, 0], [1])


def gsm8k_result(correct: list[bool], ids: list[str] | None = None) -> TaskResult:
    ids = ids or [f"p-{i}" for i in range(len(correct))]
    value = 100 * sum(correct) / len(correct)
    return TaskResult("gsm8k", "accuracy", value, len(correct), item_ids=ids, item_values=[float(c) for c in correct])


def report(t: int, *results: TaskResult) -> EvaluationReport:
    return EvaluationReport("tiny", adapter=f"ns/a@{t}" if t else None, iteration=t, results=list(results))


def test_pairs_are_matched_by_item_id_not_by_position():
    base = gsm8k_result([True, False, False, True], ["a", "b", "c", "d"])
    same_items_reordered = gsm8k_result([True, True, False, False], ["d", "a", "c", "b"])
    assert paired_against(base, same_items_reordered).difference == 0.0
    partly_other = gsm8k_result([True, True, True], ["b", "x", "y"])
    comparison = paired_against(base, partly_other)
    assert comparison.n == 1 and comparison.wins == 1 and comparison.difference == 100.0
    assert paired_against(base, TaskResult("gsm8k", "accuracy", 50.0, 4)) is None


def test_report_table_shows_each_model_against_m0():
    model_2, model_0 = outcomes(100, 10, 2, 188)
    labelled = {"M0": report(0, gsm8k_result(model_0)), "M1": report(1, gsm8k_result(list(model_0)))}
    labelled["M2"] = report(2, gsm8k_result(model_2))
    headers, rows = paired_table(labelled)
    assert headers[:5] == ["model", "benchmark", "paired items", "difference vs M0 [95% interval]", "p"]
    by_model = {row[0]: row for row in rows}
    assert set(by_model) == {"M1", "M2"}
    assert by_model["M1"][3].startswith("+0.00 [-") and by_model["M1"][4] == "1.0000"
    assert by_model["M2"][2] == "300" and by_model["M2"][3].startswith("+2.67 [+")
    assert by_model["M2"][4] == "0.0386" and by_model["M2"][5] == "10 / 2"
    assert plumbing_check(labelled) is None, "300 items per model is a measurement"


def test_few_items_or_an_undefined_score_make_the_report_a_plumbing_check():
    small = {"M0": report(0, gsm8k_result([True, False, False])), "M1": report(1, gsm8k_result([True, True, False]))}
    warning = plumbing_check(small)
    assert "Plumbing check" in warning and "GSM8K" in warning and "rlrf-gsm8k.yaml" in warning
    undefined = TaskResult("factscore", "factscore", None, 0, undefined="no answer to score")
    many = {"M0": report(0, gsm8k_result([True] * 150 + [False] * 150), undefined)}
    assert "FactScore" in plumbing_check(many) and "GSM8K" not in plumbing_check(many)
