"""The result of evaluating one model: the contract between the evaluators, the cards and the report."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

RESULTS_FILE = "eval_results.json"


@dataclass
class TaskResult:
    """One number of one benchmark, with what it needs to be read honestly.

    `judge` names the model (and revision or endpoint) behind a judge-dependent number; `None` for
    numbers computed by rule, such as GSM8K accuracy.

    `value` is `None` when the number is undefined on these items (FactScore when no answer had an atomic fact);
    `undefined` then says why. `item_ids` and `item_values` are the per-item outcomes behind a headline number
    (GSM8K: prompt id of the question and 1/0 for right/wrong; FactScore: entity and the answer's score in
    percent, `None` where it has none), so that two models evaluated on the same items can be compared item by
    item (`stats.paired_comparison`) by anyone holding the results file.
    """

    task: str
    metric: str
    value: float | None
    n: int
    ci_low: float | None = None
    ci_high: float | None = None
    judge: str | None = None
    dataset_id: str | None = None
    dataset_revision: str | None = None
    split: str | None = None
    undefined: str | None = None
    item_ids: list[str] | None = None
    item_values: list[float | None] | None = None


@dataclass
class EvaluationReport:
    """Every result for one policy: the base model and revision, and the adapter when there is one."""

    model: str
    model_revision: str | None = None
    adapter: str | None = None
    adapter_revision: str | None = None
    iteration: int | None = None
    results: list[TaskResult] = field(default_factory=list)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / RESULTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> EvaluationReport:
        path = Path(path)
        if path.is_dir():
            path = path / RESULTS_FILE
        data = json.loads(path.read_text())
        results = [TaskResult(**row) for row in data.pop("results")]
        return cls(**data, results=results)
