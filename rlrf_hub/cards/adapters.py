"""The model card of a trained adapter, rendered from `cards/adapter_card.md`."""

from __future__ import annotations

from huggingface_hub import ModelCard, ModelCardData

from .datasets import CARDS_DIR


def _table(values: dict) -> str:
    lines = ["| key | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in values.items()]
    return "\n".join(lines)


def adapter_card(lineage: dict, metrics: dict, settings: dict, load_path: str) -> ModelCard:
    base = lineage["policy"]["model"]
    data = ModelCardData(
        base_model=base,
        library_name="peft",
        license="other",
        pipeline_tag="text-generation",
        tags=["rlrf", "dpo" if lineage["method"] == "dpo" else "rejection-sampling", "lora", "trl"],
        model_name=lineage["model_name"],
        rlrf=lineage,
    )
    return ModelCard.from_template(
        data,
        template_path=str(CARDS_DIR / "adapter_card.md"),
        title=f"{lineage['model_name']} of RLRF run {lineage['run']}",
        model_name=lineage["model_name"],
        previous_model=lineage["trained_from"],
        method_name="DPO" if lineage["method"] == "dpo" else "rejection sampling (SFT on positives)",
        iteration=lineage["iteration"],
        run=lineage["run"],
        base_model=base,
        base_revision=lineage["policy"].get("revision") or "main",
        pairs_location=lineage["parents"][0]["location"],
        pairs_revision=lineage["parents"][0]["revision"],
        num_pairs=lineage["counts"]["pairs"],
        reference_model=lineage["reference_model"],
        metrics_table=_table(metrics),
        settings_table=_table(settings),
        load_path=load_path,
    )
