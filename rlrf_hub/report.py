"""The per-iteration table a run ends with."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .loop import IterationSummary

COLUMNS = (
    ("iteration", "iter"),
    ("trained", "trains"),
    ("prompts", "prompts"),
    ("candidates", "candidates"),
    ("refinements", "refinements"),
    ("parse_rate", "parse rate"),
    ("positives", "positives"),
    ("pairs", "pairs"),
    ("train_loss", "DPO loss"),
    ("reward_accuracy", "reward acc."),
    ("tokens_generated", "tokens"),
)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def summary_table(summaries: list[IterationSummary], title: str = "RLRF run") -> Table:
    table = Table(title=title)
    for _, header in COLUMNS:
        table.add_column(header, justify="right")
    for summary in summaries:
        table.add_row(*(_cell(getattr(summary, key)) for key, _ in COLUMNS))
    return table


def print_summary(summaries: list[IterationSummary], title: str = "RLRF run") -> None:
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(summary_table(summaries, title))
