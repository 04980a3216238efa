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

import re
from collections.abc import Callable, Iterable, Mapping

import yaml
from huggingface_hub import EvalResult, EvalResultEntry, ModelCard, eval_result_entries_to_yaml

from ..evaluation.results import RESULTS_FILE, EvaluationReport, TaskResult
from ..evaluation.stats import PAIRED_METHODS
from .datasets import CARDS_DIR
from .plots import plot_task
from .tables import (
    ResultsError,
    benchmark,
    format_value,
    headline_metric,
    headline_table,
    judges_of,
    markdown_table,
    merge_reports,
    metrics_table,
    paired_table,
    plumbing_check,
    report_json,
    tasks_of,
)

TASK_TYPE = "text-generation"
SOURCE_NAME = "rlrf-hub evaluation"
RESULTS_DIR = "eval"
EVAL_RESULTS_DIR = ".eval_results"
RESULT_PREFIXES = (f"{RESULTS_DIR}/", f"{EVAL_RESULTS_DIR}/")
SECTION_START, SECTION_END = "<!-- rlrf-results:start -->", "<!-- rlrf-results:end -->"
SECTION_TEMPLATE = CARDS_DIR / "results_section.md"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".txt", ".arrow")


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
