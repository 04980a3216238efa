"""What each iteration made, in numbers: kept in `iter-<t>/summary.json` and printed as the table a run ends with."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from .feedback import judge


@dataclass
class IterationSummary:
    iteration: int
    trained: str
    prompts: int
    candidates: int
    refinements: int
    rated: int
    parse_rate: float
    positives: int
    prompts_with_positive: int
    pairs: int
    train_loss: float | None
    reward_accuracy: float | None
    tokens_generated: int


def summarise_iteration(t: int, prompts, candidates, refinements, feedback, pairs, metrics: dict) -> IterationSummary:
    stats = judge.summarise(feedback)
    return IterationSummary(
        iteration=t,
        trained=f"M{t + 1}",
        prompts=len(prompts),
        candidates=len(candidates),
        refinements=len(refinements),
        rated=len(feedback),
        parse_rate=1.0 - stats["parse_failure_rate"],
        positives=sum(bool(row["is_positive"]) for row in feedback),
        prompts_with_positive=len({row["prompt_id"] for row in feedback if row["is_positive"]}),
        pairs=len(pairs),
        train_loss=metrics.get("train_loss"),
        reward_accuracy=metrics.get("rewards/accuracies"),
        tokens_generated=sum(row["num_tokens"] for row in candidates + refinements),
    )


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
