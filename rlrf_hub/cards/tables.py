"""Evaluation results as tables: the labels of a run's models, numbers with their intervals, paired comparisons
with M0, and markdown tables. The adapter card's results section and `rlrf-hub report` show them."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..evaluation.results import EvaluationReport, TaskResult
from ..evaluation.stats import BINARY_METHOD, PairedComparison, paired_comparison

MIN_INFORMATIVE_ITEMS = 100
SCIENCE_RECIPE = "recipes/smollm2-135m-cpu/rlrf-gsm8k.yaml"

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MODEL_LABEL = re.compile(r"^M(\d+)$")
ITER_TAG = re.compile(r"^iter-(\d+)$")

Reports = EvaluationReport | Iterable[EvaluationReport] | Mapping[str, EvaluationReport | Iterable[EvaluationReport]]


class ResultsError(ValueError):
    """Results that cannot be placed on a card: a bad label, or reports that contradict each other or the repo."""


@dataclass(frozen=True)
class Benchmark:
    """How a benchmark is named on cards. `column` heads its column in the summary table (SPEC Table 2), where it
    stands for the first of the `headline` metrics that a report has. `diagnostics` are metrics about the run of the
    benchmark rather than scores of the model (answer lengths, parse failures): the tables show them, the card's
    `model-index` and `.eval_results/` (which feed the Hub's leaderboards) leave them out."""

    name: str
    column: str
    task_name: str
    dataset_name: str
    dataset_id: str | None = None
    config: str | None = None
    split: str | None = None
    headline: tuple[str, ...] = ()
    diagnostics: tuple[str, ...] = ()


BENCHMARKS = {
    "just_eval": Benchmark(
        "Just-Eval",
        "Just-Eval avg",
        "Instruction following (Just-Eval, judged 1-5)",
        "Just-Eval-Instruct",
        "re-align/just-eval-instruct",
        split="test",
        headline=("average", "avg", "mean", "overall", "score"),
        diagnostics=("length_words", "length_tokens", "judge_parse_failure_rate"),
    ),
    "factscore": Benchmark(
        "FactScore",
        "FactScore",
        "Biographies (FactScore)",
        "FactScore biographies",
        headline=("factscore", "score"),
        diagnostics=("facts_per_response", "abstention_rate"),
    ),
    "gsm8k": Benchmark(
        "GSM8K",
        "GSM8K",
        "Math word problems (GSM8K, zero-shot)",
        "GSM8K",
        "openai/gsm8k",
        config="main",
        split="test",
        headline=("accuracy", "exact_match", "acc"),
    ),
}


def benchmark(task: str) -> Benchmark:
    return BENCHMARKS.get(task) or Benchmark(task, task, task, task)


# Labels and reports ------------------------------------------------------------------------------------------------
def model_label(report: EvaluationReport) -> str:
    """`M0` for the base model; `M<t>` for an adapter tagged `iter-<t>`, in a folder `M<t>`, or with `iteration=t`."""
    if report.adapter is None:
        return "M0"
    tag = ITER_TAG.match(report.adapter_revision or "")
    if tag:
        return f"M{tag.group(1)}"
    if MODEL_LABEL.match(Path(report.adapter).name):
        return Path(report.adapter).name
    if report.iteration is not None:
        return f"M{report.iteration}"
    raise ResultsError(
        f"cannot tell which model the report of adapter {report.adapter!r} belongs to: set its `iteration` "
        "(t of M_t) or pass the reports as a dict {label: report}"
    )


def order_labels(labels: Iterable[str]) -> list[str]:
    """The run's models by index, then baselines by name."""

    def key(label: str):
        match = MODEL_LABEL.match(label)
        return (0, int(match.group(1)), "") if match else (1, 0, label)

    return sorted(set(labels), key=key)


def merge_reports(reports: Iterable[EvaluationReport]) -> EvaluationReport:
    """One report from several evaluations of one model (e.g. one per task); a later result of a metric wins."""
    reports = list(reports)
    first = reports[0]
    results: dict[tuple[str, str], TaskResult] = {}
    for report in reports:
        if (report.model, report.adapter) != (first.model, first.adapter):
            raise ResultsError(
                f"reports of different models under one label: {first.model}+{first.adapter} and "
                f"{report.model}+{report.adapter}"
            )
        for result in report.results:
            results[(result.task, result.metric)] = result
    return dataclasses.replace(first, results=list(results.values()))


def labelled_reports(reports: Reports) -> dict[str, EvaluationReport]:
    """`{label: report}` in table order from reports (labelled by `model_label`) or an explicit mapping."""
    if isinstance(reports, EvaluationReport):
        reports = [reports]
    if isinstance(reports, Mapping):
        items = [
            (label, report)
            for label, value in reports.items()
            for report in ([value] if isinstance(value, EvaluationReport) else value)
        ]
    else:
        items = [(model_label(report), report) for report in reports]
    grouped: dict[str, list[EvaluationReport]] = {}
    for label, report in items:
        if not isinstance(label, str) or not LABEL.match(label):
            raise ResultsError(
                f"model label {label!r}: use letters, digits, '.', '_' and '-' (e.g. M1, M1-reward-only)"
            )
        grouped.setdefault(label, []).append(report)
    return {label: merge_reports(grouped[label]) for label in order_labels(grouped)}


def report_json(report: EvaluationReport) -> str:
    """The text `EvaluationReport.save` writes."""
    return json.dumps(dataclasses.asdict(report), indent=2, sort_keys=True) + "\n"


def report_from_json(text: str) -> EvaluationReport:
    data = json.loads(text)
    return EvaluationReport(**{**data, "results": [TaskResult(**row) for row in data.get("results", [])]})


# Numbers -----------------------------------------------------------------------------------------------------------
def tasks_of(labelled: Mapping[str, EvaluationReport]) -> list[str]:
    """Tasks in SPEC Table 2's column order (Just-Eval, FactScore, GSM8K), then any others by name."""
    found = {result.task for report in labelled.values() for result in report.results}
    known = [task for task in BENCHMARKS if task in found]
    return known + sorted(found - set(known))


def metrics_of(labelled: Mapping[str, EvaluationReport], task: str) -> list[str]:
    seen: dict[str, None] = {}
    for report in labelled.values():
        for result in report.results:
            if result.task == task:
                seen.setdefault(result.metric)
    return list(seen)


def find_result(report: EvaluationReport | None, task: str, metric: str) -> TaskResult | None:
    if report is None:
        return None
    return next((r for r in report.results if r.task == task and r.metric == metric), None)


def headline_metric(task: str, metrics: list[str]) -> str | None:
    """The metric that stands for a benchmark in the summary table: the first known name, else the first metric that
    is not a diagnostic (an abstention rate must never stand in for a missing score)."""
    scores = [name for name in metrics if name not in benchmark(task).diagnostics]
    return next((name for name in benchmark(task).headline if name in metrics), scores[0] if scores else None)


def format_value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def format_result(result: TaskResult | None, with_n: bool = False) -> str:
    """`value [low, high]`, the bracket when the interval is known; `-` when there is no result; `undefined (why)`
    when the evaluator could not compute the number."""
    if result is None:
        return "-"
    if result.value is None:
        return f"undefined ({result.undefined})" if result.undefined else "undefined"
    text = format_value(result.value)
    if result.ci_low is not None and result.ci_high is not None:
        text += f" [{format_value(result.ci_low)}, {format_value(result.ci_high)}]"
    if with_n:
        text += f" (n={result.n})"
    return text


def judges_of(labelled: Mapping[str, EvaluationReport]) -> list[str]:
    return sorted({r.judge for report in labelled.values() for r in report.results if r.judge})


def headline_results(labelled: Mapping[str, EvaluationReport]) -> dict[str, dict[str, TaskResult]]:
    """`{task: {label: result}}` of each benchmark's headline metric, for the models that have it."""
    found: dict[str, dict[str, TaskResult]] = {}
    for task in tasks_of(labelled):
        metric = headline_metric(task, metrics_of(labelled, task))
        for label, report in labelled.items():
            result = find_result(report, task, metric)
            if result is not None:
                found.setdefault(task, {})[label] = result
    return found


def plumbing_check(labelled: Mapping[str, EvaluationReport]) -> str | None:
    """A warning when a benchmark's headline number rests on fewer than `MIN_INFORMATIVE_ITEMS` items for some model
    (or is undefined): its interval is then too wide to tell the models apart, so the table checks the pipeline
    rather than measuring the models. None when every headline is measured on enough items."""
    small = [
        benchmark(task).name
        for task, results in headline_results(labelled).items()
        if any(r.value is None or r.n < MIN_INFORMATIVE_ITEMS for r in results.values())
    ]
    if not small:
        return None
    return (
        f"Plumbing check, not a measurement: {', '.join(small)} rest(s) on fewer than {MIN_INFORMATIVE_ITEMS} "
        "items per model, too few for the intervals to tell the models apart. For a measured M0 -> M1 -> M2 "
        f"comparison with paired statistics see {SCIENCE_RECIPE} and its results in the README."
    )


# Paired comparisons ------------------------------------------------------------------------------------------------
def paired_against(reference: TaskResult, other: TaskResult) -> PairedComparison | None:
    """`other` minus `reference` on the items both have an outcome for, matched by item id; None without per-item
    outcomes or common items. Right/wrong outcomes are compared in percentage points."""
    if not (reference.item_ids and other.item_ids and reference.item_values and other.item_values):
        return None
    base = {i: v for i, v in zip(reference.item_ids, reference.item_values, strict=True) if v is not None}
    pairs = [
        (v, base[i]) for i, v in zip(other.item_ids, other.item_values, strict=True) if v is not None and i in base
    ]
    if not pairs:
        return None
    comparison = paired_comparison([m for m, _ in pairs], [b for _, b in pairs])
    if comparison.method != BINARY_METHOD:
        return comparison
    return dataclasses.replace(
        comparison,
        difference=100 * comparison.difference,
        ci_low=100 * comparison.ci_low,
        ci_high=100 * comparison.ci_high,
    )


def paired_table(
    labelled: Mapping[str, EvaluationReport], reference: str = "M0"
) -> tuple[list[str], list[list[str]]] | None:
    """A row per model and benchmark: the paired difference against `reference` on the same items, its 95%
    interval, the p-value, and for right/wrong outcomes the discordant counts. None when nothing pairs up."""
    rows = []
    for task, results in headline_results(labelled).items():
        base = results.get(reference)
        for label, result in results.items():
            comparison = paired_against(base, result) if base is not None and label != reference else None
            if comparison is None:
                continue
            discordant = f"{comparison.wins} / {comparison.losses}" if comparison.wins is not None else "-"
            rows.append(
                [
                    label,
                    benchmark(task).column,
                    str(comparison.n),
                    f"{_signed(comparison.difference)} [{_signed(comparison.ci_low)}, {_signed(comparison.ci_high)}]",
                    format_p(comparison.p_value),
                    discordant,
                    comparison.method,
                ]
            )
    if not rows:
        return None
    headers = ["model", "benchmark", "paired items", f"difference vs {reference} [95% interval]", "p"]
    return [*headers, f"only model right / only {reference} right", "method"], rows


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def format_p(p_value: float) -> str:
    return "<0.0001" if p_value < 1e-4 else f"{p_value:.4f}"


# Tables ------------------------------------------------------------------------------------------------------------
def headline_table(
    labelled: Mapping[str, EvaluationReport], extra: Mapping[str, Mapping[str, str]] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of SPEC Table 2's shape: a row per model, a column per benchmark's headline metric.

    `extra` adds columns before the benchmarks: `{column: {label: text}}` (e.g. the training method of each model);
    the cost columns follow when any model's report carries its cost.
    """
    extra = {**(extra or {}), **cost_columns(labelled)}
    columns = [(task, headline_metric(task, metrics_of(labelled, task))) for task in tasks_of(labelled)]
    headers = ["model", *extra, *(benchmark(task).column for task, _ in columns)]
    rows = [
        [
            label,
            *(values.get(label, "-") for values in extra.values()),
            *(format_result(find_result(report, task, metric)) for task, metric in columns),
        ]
        for label, report in labelled.items()
    ]
    return headers, rows


def cost_columns(labelled: Mapping[str, EvaluationReport]) -> dict[str, dict[str, str]]:
    """`tokens generated` and `wall time` (data stages + training) of each model whose report has a cost."""
    costs = {label: report.cost for label, report in labelled.items() if report.cost}
    if not costs:
        return {}
    tokens = {label: f"{int(cost['tokens_generated']):,}" for label, cost in costs.items()}
    time = {label: _wall_time(cost) for label, cost in costs.items()}
    return {"tokens generated": tokens, "wall time (data + DPO)": time}


def _wall_time(cost: Mapping) -> str:
    data, train = cost.get("data_wall_time_s") or 0.0, cost.get("train_wall_time_s")
    if train is None:
        return f"{data / 60:.0f} min + ?"
    return f"{(data + train) / 60:.0f} min ({data / 60:.0f} + {train / 60:.0f})"


def metrics_table(labelled: Mapping[str, EvaluationReport]) -> tuple[list[str], list[list[str]]]:
    """Every metric of every benchmark as a row, a column per model, with intervals and sample sizes."""
    headers = ["benchmark", "metric", *labelled]
    rows = [
        [
            benchmark(task).name,
            metric,
            *(format_result(find_result(r, task, metric), True) for r in labelled.values()),
        ]
        for task in tasks_of(labelled)
        for metric in metrics_of(labelled, task)
    ]
    return headers, rows


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(headers), "|" + "---|" * len(headers), *(line(row) for row in rows)])
