"""Evaluation results on the adapter's model card: `model-index` metadata, `.eval_results/`, a table and plots.

An adapter repo (or a local adapter folder of `FolderPublisher`) with results holds:

    README.md                       the adapter card; its `model-index` carries the results of the model of this
                                    revision (M_t), its `rlrf:` lineage block and other metadata are kept, and a
                                    results section shows every model of the run (M0, M1, ..., baselines) in a
                                    table (SPEC Table 2's shape) with the plots below
    .eval_results/<task>.yaml       M_t's headline score of each benchmark in the Hub's eval-results format
                                    (huggingface_hub's `EvalResultEntry`: dataset id, task id, value, source, notes);
    .eval_results/<task>_<metric>.yaml   one file per further metric (the Hub wants one file per variant of a
                                    benchmark), its `notes` naming the metric, interval, n and judge
    eval/<task>.png                 every metric of a benchmark across M0, M1, ... (baselines as separate markers)
    eval/<label>/eval_results.json  the raw `EvaluationReport` of each model

Labels are `M<t>` for the run's models and any other name (letters, digits, `.`, `_`, `-`) for baselines. M0, the
base model, has no adapter of its own: its results live in `eval/M0/` of the adapter repo, next to the others.

On a Hub, `publish_results` adds them to the adapter repo as one commit on `main` after the tagged adapter commit
of M_t. The tag `iter-<t>` is never moved, so `PeftModel.from_pretrained(base, repo, revision="iter-<t>")` loads
exactly what was published; the results commit is tagged `iter-<t>-eval` (the adapter of M_t with its results),
and `main` shows every model evaluated so far. Publishing M_{t+1}'s adapter makes `main`'s tree that adapter
folder again, without the results; the next `publish_results` carries the earlier models' results forward from
the newest commit that holds any, so each call only needs the reports that are new.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import yaml
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    EvalResult,
    EvalResultEntry,
    HfApi,
    ModelCard,
    eval_result_entries_to_yaml,
)
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile

from ..cards import CARDS_DIR
from .results import RESULTS_FILE, EvaluationReport, TaskResult
from .stats import BINARY_METHOD, PAIRED_METHODS, PairedComparison, paired_comparison

TASK_TYPE = "text-generation"
SOURCE_NAME = "rlrf-hub evaluation"
RESULTS_DIR = "eval"
EVAL_RESULTS_DIR = ".eval_results"
RESULT_PREFIXES = (f"{RESULTS_DIR}/", f"{EVAL_RESULTS_DIR}/")
SECTION_START, SECTION_END = "<!-- rlrf-results:start -->", "<!-- rlrf-results:end -->"
SECTION_TEMPLATE = CARDS_DIR / "results_section.md"
MIN_INFORMATIVE_ITEMS = 100
SCIENCE_RECIPE = "recipes/smollm2-135m-cpu/rlrf-gsm8k.yaml"

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MODEL_LABEL = re.compile(r"^M(\d+)$")
_ITER_TAG = re.compile(r"^iter-(\d+)$")
_RAW_RESULTS = re.compile(rf"^{RESULTS_DIR}/([^/]+)/{re.escape(RESULTS_FILE)}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".txt", ".arrow")

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
    tag = _ITER_TAG.match(report.adapter_revision or "")
    if tag:
        return f"M{tag.group(1)}"
    if _MODEL_LABEL.match(Path(report.adapter).name):
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
        match = _MODEL_LABEL.match(label)
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
        if not isinstance(label, str) or not _LABEL.match(label):
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

    `extra` adds columns before the benchmarks: `{column: {label: text}}` (e.g. the training method of each model).
    """
    extra = extra or {}
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


# Plots -------------------------------------------------------------------------------------------------------------
def plot_panels(labelled: Mapping[str, EvaluationReport], panels: list[tuple[str, str, str]], title: str) -> bytes:
    """A PNG with one panel per `(task, metric, panel title)`: the run's models as a line over M0, M1, ..., with 95%
    intervals as error bars, and each baseline as its own marker at its iteration. Drawn on the Agg canvas without
    pyplot (no global backend), with no timestamp or version in the file, so equal results give equal bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    own = [label for label in labelled if _MODEL_LABEL.match(label)]
    baselines = [label for label in labelled if not _MODEL_LABEL.match(label)]
    ticks = own or baselines
    ncols = min(3, max(1, len(panels)))
    nrows = max(1, math.ceil(len(panels) / ncols))
    figure = Figure(figsize=(4.2 * ncols, 3.2 * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (task, metric, panel_title) in zip(axes, panels, strict=False):
        points = [(i, find_result(labelled[label], task, metric)) for i, label in enumerate(own)]
        _errorbar(
            ax,
            [(i, r) for i, r in points if r is not None and r.value is not None],
            "this run",
            marker="o",
            linestyle="-",
        )
        for n, label in enumerate(baselines):
            result = find_result(labelled[label], task, metric)
            if result is not None and result.value is not None:
                at = _baseline_position(labelled[label], own, ticks.index(label) if not own else None)
                _errorbar(ax, [(at, result)], label, marker="sDv^P*X"[n % 7], linestyle="none")
        ax.set_xticks(range(len(ticks)), ticks)
        ax.set_xlim(-0.5, len(ticks) - 0.5)
        ax.set_title(panel_title, fontsize=10)
        ax.grid(alpha=0.3)
        if baselines:
            ax.legend(fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def plot_task(labelled: Mapping[str, EvaluationReport], task: str) -> bytes:
    """Every metric of one benchmark across the models, a panel each."""
    panels = [(task, metric, metric) for metric in metrics_of(labelled, task)]
    return plot_panels(labelled, panels, f"{benchmark(task).name} across iterations")


def plot_headline(labelled: Mapping[str, EvaluationReport]) -> bytes:
    """The summary table's columns across the models, a panel per benchmark."""
    panels = [
        (task, headline_metric(task, metrics_of(labelled, task)), benchmark(task).column)
        for task in tasks_of(labelled)
    ]
    return plot_panels(labelled, panels, "Benchmarks across iterations")


def _baseline_position(report: EvaluationReport, own: list[str], fallback: int | None) -> float:
    if fallback is not None:
        return fallback
    if report.iteration is not None and f"M{report.iteration}" in own:
        return own.index(f"M{report.iteration}") + 0.08
    return len(own) - 1 + 0.08


def _errorbar(ax, points: list[tuple[float, TaskResult]], label: str, **style) -> None:
    if not points:
        return
    xs = [x for x, _ in points]
    ys = [r.value for _, r in points]
    low = [max(0.0, r.value - r.ci_low) if r.ci_low is not None else 0.0 for _, r in points]
    high = [max(0.0, r.ci_high - r.value) if r.ci_high is not None else 0.0 for _, r in points]
    ax.errorbar(xs, ys, yerr=[low, high], label=label, capsize=3, **style)


# Card metadata -----------------------------------------------------------------------------------------------------
def _dataset(result: TaskResult) -> tuple[str, str | None, str | None]:
    """Hub dataset id, config and revision. A local path (the evaluators accept one) gives the benchmark's Hub id,
    without config or revision, since those describe the Hub copy; the raw results keep the path."""
    bench = benchmark(result.task)
    given = result.dataset_id
    if given and _HUB_ID.match(given) and not given.endswith(_DATA_SUFFIXES):
        return given, bench.config if given == bench.dataset_id else None, result.dataset_revision
    return bench.dataset_id or result.task, bench.config if bench.dataset_id else None, None


def _metric_args(result: TaskResult) -> dict:
    args = {"n": result.n}
    if result.ci_low is not None and result.ci_high is not None:
        args.update(ci95_low=result.ci_low, ci95_high=result.ci_high)
    if result.judge:
        args["judge"] = result.judge
    return args


def _scores_of(reports: EvaluationReport | Iterable[EvaluationReport]) -> list[TaskResult]:
    """The results that are scores of the model (see `Benchmark.diagnostics`) and have a value."""
    report = reports if isinstance(reports, EvaluationReport) else merge_reports(reports)
    return [r for r in report.results if r.metric not in benchmark(r.task).diagnostics and r.value is not None]


def model_index(
    reports: EvaluationReport | Iterable[EvaluationReport], source_url: str | None = None
) -> list[EvalResult]:
    """`EvalResult`s of one model's reports for `ModelCardData.eval_results` (the card's `model-index`).

    A judge-dependent metric names its judge in `metric_config` (`judge=<id>`), in its pretty name and in
    `metric_args`, which also carry `n` and the 95% interval. `verified` is False: these numbers were not computed
    by the Hub's evaluation service.
    """
    entries = []
    for result in _scores_of(reports):
        bench = benchmark(result.task)
        dataset_id, config, revision = _dataset(result)
        judged = f", judged by {result.judge}" if result.judge else ""
        entries.append(
            EvalResult(
                task_type=TASK_TYPE,
                task_name=bench.task_name,
                dataset_type=dataset_id,
                dataset_name=bench.dataset_name,
                dataset_config=config,
                dataset_split=result.split or bench.split,
                dataset_revision=revision,
                metric_type=result.metric,
                metric_value=result.value,
                metric_name=f"{bench.name} {result.metric}{judged}",
                metric_config=f"judge={result.judge}" if result.judge else None,
                metric_args=_metric_args(result),
                verified=False,
                source_name=SOURCE_NAME if source_url else None,
                source_url=source_url,
            )
        )
    return entries


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "metric"


def _notes(result: TaskResult) -> str:
    parts = [f"metric: {result.metric}", f"n={result.n}"]
    if result.ci_low is not None and result.ci_high is not None:
        parts.append(f"95% interval [{format_value(result.ci_low)}, {format_value(result.ci_high)}]")
    if result.judge:
        parts.append(f"judge: {result.judge}")
    if result.dataset_id and _dataset(result)[0] != result.dataset_id:
        parts.append(f"data: {result.dataset_id}")
    return "; ".join(parts)


def eval_results_files(
    reports: EvaluationReport | Iterable[EvaluationReport], source_url: str | None = None
) -> dict[str, str]:
    """`{path: yaml}` for `.eval_results/`: `<task>.yaml` holds the benchmark's headline metric, `<task>_<metric>.yaml`
    each other metric, one `EvalResultEntry` per file with `task_id` the task."""
    results = _scores_of(reports)
    headlines = {
        task: headline_metric(task, [r.metric for r in results if r.task == task])
        for task in {r.task for r in results}
    }
    files: dict[str, str] = {}
    for result in results:
        name = (
            _slug(result.task) if result.metric == headlines[result.task] else _slug(f"{result.task}_{result.metric}")
        )
        path, n = f"{EVAL_RESULTS_DIR}/{name}.yaml", 1
        while path in files:
            n += 1
            path = f"{EVAL_RESULTS_DIR}/{name}_{n}.yaml"
        dataset_id, _, revision = _dataset(result)
        entry = EvalResultEntry(
            dataset_id=dataset_id,
            task_id=result.task,
            value=result.value,
            dataset_revision=revision,
            source_url=source_url,
            source_name=SOURCE_NAME if source_url else None,
            notes=_notes(result),
        )
        files[path] = yaml.safe_dump(eval_result_entries_to_yaml([entry]), sort_keys=False, allow_unicode=True)
    return dict(sorted(files.items()))


def _with_section(text: str, section: str | None) -> str:
    """Replace the results section between its markers, or put it before the card's first `## ` heading."""
    start, end = text.find(SECTION_START), text.find(SECTION_END)
    if start != -1 and end != -1:
        text = text[:start].rstrip("\n") + "\n\n" + text[end + len(SECTION_END) :].lstrip("\n")
    if not section:
        return text
    section = section.strip("\n") + "\n\n"
    heading = re.search(r"^## ", text, flags=re.MULTILINE)
    if heading is None:
        return text.rstrip("\n") + "\n\n" + section
    return text[: heading.start()] + section + text[heading.start() :]


def card_label(card: ModelCard) -> str | None:
    """The model a card describes, from its `rlrf:` lineage block (`M<t>`)."""
    lineage = card.data.get("rlrf") or {}
    return lineage.get("model_name") if isinstance(lineage, dict) else None


def update_card(
    card: ModelCard,
    reports: EvaluationReport | Iterable[EvaluationReport] | None,
    *,
    model_name: str | None = None,
    results_section: str | None = None,
    source_url: str | None = None,
) -> ModelCard:
    """A copy of `card` whose `model-index` holds `reports` (one model's) and whose text has `results_section`.

    Every other metadata key (the `rlrf:` block, base_model, tags, ...) is kept as it was; `model_name` defaults to
    `<run>-<M_t>` from the lineage block, the name leaderboards show.
    """
    updated = ModelCard(card.content)
    lineage = updated.data.get("rlrf") or {}
    label = card_label(updated)
    default_name = f"{lineage['run']}-{label}" if isinstance(lineage, dict) and lineage.get("run") and label else None
    results = model_index(reports, source_url) if reports is not None else None
    updated.data.eval_results = results or None
    updated.data.model_name = model_name or default_name or updated.data.model_name or label
    if results and not updated.data.model_name:
        raise ResultsError("the card names no model (no rlrf.model_name or model_name): pass model_name")
    updated.text = _with_section(updated.text, results_section)
    return updated


# The files of a results commit -------------------------------------------------------------------------------------
def results_section(labelled: Mapping[str, EvaluationReport], current: str | None, plots: list[dict], run: str) -> str:
    """The card's results section, rendered from `cards/results_section.md`."""
    from jinja2 import Template

    paired = paired_table(labelled)
    return Template(SECTION_TEMPLATE.read_text(), trim_blocks=True, keep_trailing_newline=True).render(
        run=run,
        current=current or "the latest model",
        plumbing=plumbing_check(labelled),
        headline_table=markdown_table(*headline_table(labelled)),
        paired_table=markdown_table(*paired) if paired else None,
        paired_caption=PAIRED_METHODS,
        metrics_table=markdown_table(*metrics_table(labelled)),
        plots=plots,
        judges=", ".join(f"`{judge}`" for judge in judges_of(labelled)),
    )


def results_files(
    card: ModelCard,
    labelled: Mapping[str, EvaluationReport],
    current: str | None,
    source_url: Callable[[str], str] | None = None,
) -> dict[str, bytes]:
    """Every file a results update writes, by repo path: README.md, `.eval_results/*.yaml`, plots, raw reports.

    `current` is the label of the model the card describes; `source_url(path)` gives the public URL of a repo path
    (None where there is none, as for local folders).
    """
    files = {
        f"{RESULTS_DIR}/{label}/{RESULTS_FILE}": report_json(report).encode() for label, report in labelled.items()
    }
    plots = []
    for task in tasks_of(labelled):
        path = f"{RESULTS_DIR}/{_slug(task)}.png"
        files[path] = plot_task(labelled, task)
        plots.append({"title": f"{benchmark(task).name} across iterations", "path": path})
    own = labelled.get(current) if current else None
    source = source_url(f"{RESULTS_DIR}/{current}/{RESULTS_FILE}") if source_url and own else None
    if own is not None:
        files.update({path: text.encode() for path, text in eval_results_files(own, source).items()})
    section = results_section(labelled, current, plots, _run_name(card))
    files["README.md"] = update_card(card, own, results_section=section, source_url=source).content.encode()
    return files


def _run_name(card: ModelCard) -> str:
    lineage = card.data.get("rlrf") or {}
    return str(lineage.get("run", "")) if isinstance(lineage, dict) else ""


# Reading results back ----------------------------------------------------------------------------------------------
def read_folder_results(folder: str | Path) -> dict[str, EvaluationReport]:
    """The raw reports under `<folder>/eval/<label>/eval_results.json`, by label."""
    root = Path(folder) / RESULTS_DIR
    found = {path.parent.name: EvaluationReport.load(path) for path in sorted(root.glob(f"*/{RESULTS_FILE}"))}
    return {label: found[label] for label in order_labels(found)}


def read_hub_results(api: HfApi, repo_id: str, revision: str = "main") -> tuple[dict[str, EvaluationReport], str]:
    """The raw reports of the newest commit reachable from `revision` that holds any, and that commit ('' if none).

    An adapter commit replaces the repo's tree by the adapter folder, so the results of earlier models are found
    in the results commit before it.
    """
    for commit in api.list_repo_commits(repo_id, revision=revision):
        paths = [p for p in api.list_repo_files(repo_id, revision=commit.commit_id) if _RAW_RESULTS.match(p)]
        if paths:
            found = {
                _RAW_RESULTS.match(path).group(1): EvaluationReport.load(
                    api.hf_hub_download(repo_id, path, revision=commit.commit_id)
                )
                for path in paths
            }
            return {label: found[label] for label in order_labels(found)}, commit.commit_id
    return {}, ""


# Publishing --------------------------------------------------------------------------------------------------------
def _adapter_files(api: HfApi, repo_id: str, revision: str) -> dict[str, str]:
    """The adapter's own files at a revision (not the card, not results) by content id."""
    return {
        entry.path: entry.lfs.sha256 if entry.lfs is not None else entry.blob_id
        for entry in api.list_repo_tree(repo_id, revision=revision, recursive=True)
        if isinstance(entry, RepoFile)
        and entry.path not in ("README.md", ".gitattributes")
        and not entry.path.startswith(RESULT_PREFIXES)
    }


def publish_results(
    api: HfApi,
    repo_id: str,
    revision: str,
    reports: Reports,
    *,
    branch: str = "main",
    label: str | None = None,
    tag: bool = True,
) -> str:
    """Put evaluation results on the card of the adapter at `revision` (e.g. `iter-2`) as one commit on `branch`.

    `reports` are the new results (`EvaluationReport`s labelled by `model_label`, or a `{label: report}` dict for
    baselines); results already on the repo are kept unless a new report has the same label. The card starts from
    the one at `revision` and describes the model named by its `rlrf.model_name` (or `label`). `branch` must hold
    the same adapter as `revision`: the card on `main` describes the adapter stored there. When `revision` is a tag
    `iter-<t>` and `tag` is set, the commit is tagged `iter-<t>-eval` unless that tag exists already (tags are never
    moved; later updates land on `branch` only). Only changed files are committed, and nothing when nothing changed
    (the branch head's sha is returned then), so publishing the same results again is a no-op.
    """
    new = labelled_reports(reports)
    target = api.repo_info(repo_id, revision=revision).sha
    head = api.repo_info(repo_id, revision=branch).sha
    if _adapter_files(api, repo_id, target) != _adapter_files(api, repo_id, head):
        raise ResultsError(
            f"{repo_id}: branch {branch!r} holds a different adapter than {revision!r} (a later model was "
            "published?); publish on the card of the adapter the branch holds, passing the older models' reports too"
        )
    card = ModelCard.load(api.hf_hub_download(repo_id, "README.md", revision=target))
    current = label or card_label(card)
    if current is None:
        raise ResultsError(f"{repo_id}@{revision}: the card has no rlrf.model_name; pass label=")
    existing, _ = read_hub_results(api, repo_id, head)
    labelled = {**existing, **new}
    labelled = {name: labelled[name] for name in order_labels(labelled)}

    eval_tag = f"{revision}-eval" if tag and _ITER_TAG.match(revision) else None
    new_tag = eval_tag if eval_tag and eval_tag not in {ref.name for ref in api.list_repo_refs(repo_id).tags} else None

    def source_url(path: str) -> str:
        return f"{api.endpoint.rstrip('/')}/{repo_id}/blob/{quote(branch, safe='')}/{path}"

    files = results_files(card, labelled, current, source_url)
    remote = {
        entry.path: entry
        for entry in api.list_repo_tree(repo_id, revision=head, recursive=True)
        if isinstance(entry, RepoFile)
    }
    stale = [path for path in remote if path.startswith(RESULT_PREFIXES) and path not in files]
    changed = {path: content for path, content in files.items() if not _same_file(remote.get(path), content)}
    sha = head
    if stale or changed:
        operations = [CommitOperationDelete(path_in_repo=path) for path in stale] + [
            CommitOperationAdd(path_in_repo=path, path_or_fileobj=content) for path, content in changed.items()
        ]
        message = f"Evaluation results of {current}"
        sha = api.create_commit(repo_id, operations, commit_message=message, revision=branch, parent_commit=head).oid
    if new_tag:
        try:
            api.create_tag(repo_id, tag=new_tag, revision=sha, tag_message=f"{current} with its evaluation")
        except HfHubHTTPError as error:
            if error.response is None or error.response.status_code != 409:
                raise
    return sha


def _same_file(entry: RepoFile | None, content: bytes) -> bool:
    """Whether a repo file holds `content`: LFS files by sha256, the others by git blob id."""
    if entry is None:
        return False
    if entry.lfs is not None:
        return hashlib.sha256(content).hexdigest() == entry.lfs.sha256
    return hashlib.sha1(f"blob {len(content)}\0".encode() + content).hexdigest() == entry.blob_id


def publish_results_to_folder(
    folder: str | Path, reports: Reports, *, label: str | None = None, carry_from: Iterable[str | Path] = ()
) -> Path:
    """The same results files as `publish_results`, written into a local Hub-shaped adapter folder.

    Results found in `carry_from` folders (earlier adapters, in order) and in `folder` itself are kept unless a new
    report has the same label. Each file is replaced atomically; returns the card's path.
    """
    folder = Path(folder)
    readme = folder / "README.md"
    if not readme.is_file():
        raise ResultsError(f"{readme} does not exist: publish the adapter (with its card) before its results")
    card = ModelCard.load(readme)
    current = label or card_label(card)
    if current is None:
        raise ResultsError(f"{readme}: the card has no rlrf.model_name; pass label=")
    labelled: dict[str, EvaluationReport] = {}
    for other in [*carry_from, folder]:
        labelled.update(read_folder_results(other))
    labelled.update(labelled_reports(reports))
    labelled = {name: labelled[name] for name in order_labels(labelled)}
    files = results_files(card, labelled, current)
    for old in (path for prefix in RESULT_PREFIXES for path in sorted((folder / prefix).rglob("*"))):
        if old.is_file() and old.relative_to(folder).as_posix() not in files:
            old.unlink()
    for path, content in files.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(content)
        os.replace(tmp, target)
    return readme


def publish_evaluation(publisher, iteration: int, reports: Reports):
    """Results of M_<iteration> (and any other model, e.g. M0 with M1) on the card of adapter M_<iteration>.

    Works with both publishers of a run: a `HubPublisher` commits to `<ns>/<run>-adapter` (see `publish_results`),
    a `FolderPublisher` writes into `adapters/M<iteration>/`, carrying the results of the earlier adapters' folders.
    The result is recorded in the run's `published.json` as kind `results` and returned as a `Published`.
    """
    from ..hub.publisher import HubPublisher, iteration_tag
    from ..publishing import Published, record_published

    if iteration < 1:
        raise ResultsError("results go on an adapter's card: publish M0's results together with M1's (iteration=1)")
    if isinstance(publisher, HubPublisher):
        repo_id = publisher.repo_id("adapter")
        sha = publish_results(publisher.api, repo_id, iteration_tag(iteration), reports)
        published = Published("results", f"M{iteration}", iteration, repo_id, sha)
        details = {"repo_id": repo_id, "repo_type": "model", "tag": f"{iteration_tag(iteration)}-eval"}
        record_published(publisher.work_dir / "published.json", published, **details)
        return published
    folder = publisher.adapter_dir(iteration)
    carry = [publisher.adapter_dir(k) for k in range(1, iteration)]
    publish_results_to_folder(folder, reports, carry_from=[p for p in carry if p.is_dir()])
    digest = hashlib.sha256()
    for path in sorted((folder / RESULTS_DIR).glob(f"*/{RESULTS_FILE}")):
        digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    published = Published("results", f"M{iteration}", iteration, str(folder), digest.hexdigest()[:40])
    record_published(publisher.root / "published.json", published)
    return published


def find_evaluation(publisher, iteration: int, label: str | None = None) -> EvaluationReport | None:
    """The report of `label` (default `M<iteration>`) already on the card of adapter M_<iteration>, or None.

    A resumed run asks this before evaluating M_t again: on a Hub it reads the `iter-<t>-eval` tag, in folders the
    adapter folder's `eval/`.
    """
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    from ..hub.publisher import HubPublisher, iteration_tag

    label = label or f"M{iteration}"
    path = f"{RESULTS_DIR}/{label}/{RESULTS_FILE}"
    if isinstance(publisher, HubPublisher):
        repo_id, tag = publisher.repo_id("adapter"), f"{iteration_tag(iteration)}-eval"
        try:
            return EvaluationReport.load(publisher.api.hf_hub_download(repo_id, path, revision=tag))
        except (EntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError):
            return None
    local = publisher.adapter_dir(iteration) / path
    return EvaluationReport.load(local) if local.is_file() else None
