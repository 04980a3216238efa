"""The dataset card of a published stage, rendered from `cards/dataset_card.md` with huggingface_hub's card classes."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

CARDS_DIR = Path(__file__).resolve().parents[2] / "cards"


def _markdown_rows(rows: list[dict], limit: int = 3, width: int = 160) -> str:
    if not rows:
        return "_This stage produced no rows._"
    blocks = []
    for row in rows[:limit]:
        shown = {k: (v[:width] + "..." if isinstance(v, str) and len(v) > width else v) for k, v in row.items()}
        blocks.append("```json\n" + json.dumps(shown, ensure_ascii=False, indent=1, default=str)[:2000] + "\n```")
    return "\n\n".join(blocks)


def dataset_card(lineage: dict, rows: list[dict], load_path: str, data_pattern: str, description: str) -> DatasetCard:
    """`description` says what a row of the stage is (each stage module's `CARD_DESCRIPTION`).

    `data_pattern` names the shards by content hash: `datasets` caches a local folder by its card's patterns, so a
    pattern shared by two different folders would serve one folder's cached rows for the other.
    """
    stage = lineage["stage"]
    data = DatasetCardData(
        license="other",
        task_categories=["text-generation"],
        tags=["rlrf", "synthetic", stage],
        source_datasets=sorted({row["source"] for row in rows if "source" in row}) or None,
        pretty_name=f"RLRF {stage} ({lineage['run']}, iteration {lineage['iteration']})",
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": data_pattern}]}],
        rlrf=lineage,
    )
    rate = lineage.get("parse_failure_rate")
    return DatasetCard.from_template(
        data,
        template_path=str(CARDS_DIR / "dataset_card.md"),
        title=data.pretty_name,
        stage=stage,
        iteration=lineage["iteration"],
        run=lineage["run"],
        stage_description=description,
        policy=describe(lineage.get("policy")),
        feedback_model=describe(lineage.get("feedback_model")),
        reward_model=describe(lineage.get("reward_model")),
        num_rows=len(rows),
        parse_failure_rate="n/a" if rate is None else f"{rate:.1%}",
        tokens_generated=lineage.get("tokens_generated", 0),
        wall_time=f"{lineage.get('wall_time_s', 0):.0f} s",
        load_path=load_path,
        sample_rows=_markdown_rows(rows),
    )


def describe(value) -> str:
    if not value:
        return "none"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items() if v is not None)
    return str(value)
