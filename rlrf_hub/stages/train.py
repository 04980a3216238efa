"""Stage 2: train M_(t+1), a LoRA adapter, on the iteration's pairs (DPO, or SFT on the positives for `rs`), and
publish it with its card. How an adapter is trained is `rlrf_hub.training`."""

from __future__ import annotations

import json
import time

from ..errors import RunError
from ..publishing import Published
from ..training import METRICS_FILE
from .base import IterationContext

NAME = "adapter"
PARENTS = ("pairs", "policy")
TRAINING_INPUTS = (
    "beta",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "loss_type",
)
LORA_INPUTS = ("load_in_4bit", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
CARD_TRAINING = (
    "beta",
    "learning_rate",
    "lr_scheduler_type",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
)
CARD_LORA = ("load_in_4bit", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")


def applies(ctx: IterationContext) -> bool:
    return True


def key_inputs(ctx: IterationContext) -> dict:
    s = ctx.settings.train
    return {
        **ctx.policy_inputs(),
        "rule": ctx.rule,
        "reference_model": s.reference_model,
        **{name: getattr(s.training_args, name, None) for name in TRAINING_INPUTS},
        **{name: getattr(s.model_args, name, None) for name in LORA_INPUTS},
    }


def find(ctx: IterationContext) -> Published | None:
    """Worker 0 alone trains; the others wait for the adapter."""
    model_index = ctx.t + 1
    return ctx.wait_published(f"M{model_index}", lambda: ctx.publisher.find_adapter(model_index))


def load(ctx: IterationContext, found: Published) -> dict | None:
    """The training metrics of a published adapter; None (train again) when worker 0 finds no metrics file."""
    metrics_path = ctx.publisher.adapter_dir(ctx.t + 1) / METRICS_FILE
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text())["metrics"]
    return None if ctx.shard.merger else {}


def run(ctx: IterationContext, key: str) -> tuple[dict, Published]:
    ctx.backends.close()
    pairs = ctx.outputs["pairs"]
    if not pairs:
        raise RunError(
            f"iteration {ctx.t} produced no training rows with pairing {ctx.rule!r}: no response was rated "
            "1 on every aspect it was rated on. Sample more (num_candidates, num_refinements), add prompts, "
            "or use a stronger feedback model; the stages published so far are kept."
        )
    from datasets import Dataset

    from ..schemas import PAIRS
    from ..training import train_adapter

    s, model_index = ctx.settings.train, ctx.t + 1
    method = "rs" if ctx.rule == "rs" else "dpo"
    reference = ctx.adapter_path if s.reference_model == "previous" else None
    result = train_adapter(
        Dataset.from_list(pairs, features=PAIRS),
        s.model_args,
        s.training_args,
        ctx.publisher.adapter_dir(model_index),
        init_adapter=ctx.adapter_path,
        reference_adapter=reference,
        method=method,
    )
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str))}
    return metrics, _publish(ctx, metrics, method, key)


def _publish(ctx: IterationContext, metrics: dict, method: str, key: str) -> Published:
    model_index, pairs = ctx.t + 1, ctx.outputs["pairs"]
    parents = [ctx.published["pairs"]]
    lineage = ctx.lineage(NAME, [], parents, time.time(), counts={"pairs": len(pairs)}, content_key=key)
    lineage.update(
        model_name=f"M{model_index}",
        method=method,
        trained_from=f"M{ctx.t}" if ctx.t else "M0 (the base model)",
        reference_model=_reference(ctx),
    )
    s = ctx.settings.train
    settings = {
        **{name: getattr(s.training_args, name) for name in CARD_TRAINING},
        "lr_scheduler_type": str(s.training_args.lr_scheduler_type),
        **{name: getattr(s.model_args, name) for name in CARD_LORA},
        "seed": s.training_args.seed,
    }
    return ctx.publisher.publish_adapter(model_index, lineage, metrics, settings)


def _reference(ctx: IterationContext) -> str:
    previous = ctx.policy_adapter
    if previous and ctx.settings.train.reference_model == "previous":
        return f"M{ctx.t} ({previous.location}@{previous.revision})"
    return "M0 (the base model)"
