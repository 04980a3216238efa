"""The dataset card of a published stage, rendered from `cards/dataset_card.md` with huggingface_hub's card classes."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

CARDS_DIR = Path(__file__).resolve().parents[2] / "cards"

STAGE_DESCRIPTIONS = {
    "prompts": "Each row is one RL prompt with its task type (general, math or bio) and, where the task has one, "
    "the reference the feedback model is shown (a worked math solution or a Wikipedia text about the person).",
    "candidates": "Each row is one response sampled from the current policy for a prompt; `sample_index` numbers "
    "the samples of a prompt.",
    "feedback": "Each row is the fine-grained feedback on one rated response (candidates and refinements alike, "
    "see `origin`): the rated aspects in order, a rating in {-1, 0, 1} and a critique for each, one "
    "`rating_<aspect>` column per aspect (empty when not rated), the raw reply of the judge, whether it parsed, "
    "and the reward used for ranking.",
    "refinements": "Each row is one refinement: the policy was shown its best candidate (`parent_id`) with that "
    "candidate's feedback and asked for an improved answer.",
    "pairs": "Each row is a preference pair in TRL's conversational format (`prompt`, `chosen`, `rejected`), "
    "ready for `DPOTrainer`; ids, ratings, rewards and origins of both sides are kept for analysis.",
}


def _markdown_rows(rows: list[dict], limit: int = 3, width: int = 160) -> str:
    if not rows:
        return "_This stage produced no rows._"
    blocks = []
    for row in rows[:limit]:
        shown = {k: (v[:width] + "..." if isinstance(v, str) and len(v) > width else v) for k, v in row.items()}
        blocks.append("```json\n" + json.dumps(shown, ensure_ascii=False, indent=1, default=str)[:2000] + "\n```")
    return "\n\n".join(blocks)


def dataset_card(lineage: dict, rows: list[dict], load_path: str, data_pattern: str) -> DatasetCard:
    """`data_pattern` names the shards by content hash: `datasets` caches a local folder by its card's
    patterns, so a pattern shared by two different folders would serve one folder's cached rows for the other."""
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
        stage_description=STAGE_DESCRIPTIONS[stage],
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
