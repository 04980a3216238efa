"""Plots of a run's evaluation results across iterations, drawn as PNG bytes for the adapter card."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping

from ..evaluation.results import EvaluationReport, TaskResult
from .tables import MODEL_LABEL, benchmark, find_result, headline_metric, metrics_of, tasks_of


def plot_panels(labelled: Mapping[str, EvaluationReport], panels: list[tuple[str, str, str]], title: str) -> bytes:
    """A PNG with one panel per `(task, metric, panel title)`: the run's models as a line over M0, M1, ..., with 95%
    intervals as error bars, and each baseline as its own marker at its iteration. Drawn on the Agg canvas without
    pyplot (no global backend), with no timestamp or version in the file, so equal results give equal bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    own = [label for label in labelled if MODEL_LABEL.match(label)]
    baselines = [label for label in labelled if not MODEL_LABEL.match(label)]
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
