"""`evaluate` modules of the benchmarks, loadable offline: `evaluate.load(rlrf_hub.metrics.path("factscore"))`.

`evaluate.load("name")` looks the name up on the Hub; a local path loads the module shipped here instead.
"""

from __future__ import annotations

from pathlib import Path

METRICS = ("gsm8k_accuracy", "factscore", "just_eval")


def path(name: str) -> str:
    """The folder of the `evaluate` module `name` (one of `METRICS`), to give to `evaluate.load`."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}: choose from {', '.join(METRICS)}")
    return str(Path(__file__).parent / name)
