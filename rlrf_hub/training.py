"""Stage 2: train one LoRA/QLoRA adapter on a pairs dataset, by DPO or by rejection sampling (SFT on positives).

The policy base comes from the recipe's `ModelConfig` (4-bit nf4 when `load_in_4bit`); the adapter either starts
fresh from the LoRA settings there or continues the previous iteration's adapter. Only the adapter and the tokenizer
are written, into a temporary sibling folder that is renamed into place once complete.

Which model is the DPO reference. TRL 1.16 has no separate reference for a PEFT policy: it computes the reference
log-probs on the policy itself, through the adapter named `ref` when the model has one and with every adapter
disabled (the base) otherwise. Given a `PeftModel`, `DPOTrainer` adds `ref` as a copy of the starting adapter; given a
`peft_config`, it adds none. `train_adapter` therefore sets that adapter explicitly after building the trainer: none
for `reference_adapter=None` (the reference is the base M0), or `reference_adapter` loaded frozen under that name
(the reference is base + that adapter, e.g. M_t). One base in memory serves policy and reference; because the
reference must be in place before any reference log-probs are computed, `precompute_ref_log_probs` is turned off.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .models import resolve_model

METHODS = ("dpo", "rs")
REFERENCE_ADAPTER = "ref"
METRICS_FILE = "training_metrics.json"
LOOP_CONTROLLED = {
    "save_strategy": "no",
    "eval_strategy": "no",
    "load_best_model_at_end": False,
    "push_to_hub": False,
    "model_init_kwargs": None,
}
SFT_EXTRA_FIELDS = ("max_length", "dataset_num_proc", "pad_to_multiple_of")
MEAN_LOGGED = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "mean_token_accuracy")


@dataclass
class TrainResult:
    """Where the adapter was written and what training measured (see `summarize_logs` for the metric keys)."""

    adapter_dir: str
    metrics: dict
    method: str
    log_history: list[dict] = field(default_factory=list)


def train_adapter(
    pairs,
    model_args,
    training_args,
    output_dir: str | Path,
    init_adapter: str | None = None,
    reference_adapter: str | None = None,
    method: str = "dpo",
) -> TrainResult:
    """Train an adapter on `pairs` (PAIRS schema) and write it, with the tokenizer, to `output_dir`.

    Args:
        pairs: a `datasets.Dataset` with conversational `prompt`, `chosen` and `rejected` columns; other columns
            are dropped. For `rs` only `prompt` and `chosen` are used.
        model_args: TRL's `ModelConfig`: the base and the LoRA settings.
        training_args: TRL's `DPOConfig`: the trainer arguments (its `output_dir`, saving, evaluation and Hub pushes
            are controlled here).
        output_dir: the adapter folder; replaced as a whole when training completes.
        init_adapter: an adapter folder or Hub id to continue training; a fresh LoRA when `None`.
        reference_adapter: DPO reference = base + this adapter (frozen); the base itself when `None`.
        method: `dpo` (TRL `DPOTrainer`) or `rs` (rejection sampling: TRL `SFTTrainer` on prompt -> chosen).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    dataset = _training_dataset(pairs, method)
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    workdir = output_dir.with_name(f".{output_dir.name}-partial-{uuid.uuid4().hex[:8]}")
    workdir.mkdir()
    try:
        trainer = _build_trainer(dataset, model_args, training_args, workdir, init_adapter, reference_adapter, method)
        output = trainer.train()
        log_history = list(trainer.state.log_history)
        metrics = summarize_logs(log_history, output.training_loss, trainer.state.global_step)
        metrics["num_examples"] = len(dataset)
        _save_adapter(trainer, model_args, workdir, metrics, method, init_adapter, reference_adapter)
        if trainer.accelerator.is_main_process:
            _publish(workdir, output_dir)
        trainer.accelerator.wait_for_everyone()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _release(trainer)
    return TrainResult(str(output_dir), metrics, method, log_history)


def _training_dataset(pairs, method: str):
    if len(pairs) == 0:
        raise ValueError("the pairs dataset is empty: there is nothing to train on")
    if method == "rs":
        return pairs.select_columns(["prompt", "chosen"]).rename_column("chosen", "completion")
    dataset = pairs.select_columns(["prompt", "chosen", "rejected"])
    empty = sum(1 for rejected in dataset["rejected"] if not rejected)
    if empty:
        raise ValueError(
            f"{empty} pair(s) have an empty `rejected` (rejection-sampling rows): train them with method='rs'"
        )
    return dataset


def _build_trainer(dataset, model_args, training_args, workdir: Path, init_adapter, reference_adapter, method: str):
    tokenizer = load_tokenizer(model_args)
    if method == "dpo":
        from trl import DPOTrainer

        args = _copy_config(training_args, "DPOConfig", workdir, precompute_ref_log_probs=False)
    else:
        from trl import SFTTrainer

        args = _copy_config(training_args, "SFTConfig", workdir)
    model, peft_config = _load_policy(model_args, args, init_adapter)
    trainer_cls = DPOTrainer if method == "dpo" else SFTTrainer
    trainer = trainer_cls(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    if method == "dpo":
        set_reference_adapter(trainer.model, reference_adapter, disable_dropout=args.disable_dropout)
    return trainer


def _copy_config(training, config_name: str, workdir: Path, **overrides):
    """A fresh `DPOConfig`/`SFTConfig` carrying the recipe's training arguments, with the loop's own settings.

    For SFT only the fields of `transformers.TrainingArguments` (learning rate, batch size, steps, schedule, seed,
    precision, device...) and the sequence length carry over: DPO fields such as `loss_type` mean something else there.
    """
    import trl
    from transformers import TrainingArguments

    config_cls = getattr(trl, config_name)
    target = {f.name for f in dataclasses.fields(config_cls) if f.init}
    if config_name != type(training).__name__:
        target &= {f.name for f in dataclasses.fields(TrainingArguments) if f.init} | set(SFT_EXTRA_FIELDS)
    values = {f.name: getattr(training, f.name) for f in dataclasses.fields(training) if f.init and f.name in target}
    values.update(LOOP_CONTROLLED, output_dir=str(workdir), **overrides)
    return config_cls(**values)


def load_tokenizer(model_args):
    """The model's tokenizer, with the end-of-sequence token as pad token when it has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model(model_args.model_name_or_path), revision=model_args.model_revision
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_policy(model_args, args, init_adapter: str | None):
    """The base (nf4 4-bit when `load_in_4bit`) plus either the adapter to continue or a LoRA config for the trainer.

    The adapter is always LoRA, whatever `use_peft` says: each iteration's product is an adapter.
    """
    from transformers import AutoModelForCausalLM
    from trl import get_peft_config, get_quantization_config

    quantization_config = get_quantization_config(model_args)
    base = resolve_model(model_args.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(
        base,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=getattr(args, "trust_remote_code", False),
        quantization_config=quantization_config,
        device_map=_device_map(args) if quantization_config is not None else None,
    )
    if quantization_config is not None and not (args.fsdp or _launched_with_fsdp()):
        # Under FSDP every parameter must keep the 4-bit storage dtype; this would cast the others to float32.
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=args.gradient_checkpointing,
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
        )
    if init_adapter is None:
        return model, get_peft_config(dataclasses.replace(model_args, use_peft=True))
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    model.peft_config["default"].base_model_name_or_path = base  # saved adapters name the recipe's base instead
    return model, None


def _device_map(args) -> dict | None:
    """bitsandbytes quantizes while loading, so a 4-bit base is placed on this process's accelerator right away.

    DeepSpeed and FSDP place parameters themselves and need `None`, whether they come from the training arguments
    or from `accelerate launch --config_file`.
    """
    from accelerate import DistributedType, PartialState

    state = PartialState()
    if args.use_cpu or state.device.type == "cpu" or args.deepspeed or args.fsdp:
        return None
    if state.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        return None
    return {"": state.local_process_index}


def _launched_with_fsdp() -> bool:
    """Whether `accelerate launch` started this process with an FSDP config."""
    from accelerate import DistributedType, PartialState

    return PartialState().distributed_type == DistributedType.FSDP


def set_reference_adapter(model, reference_adapter: str | None, disable_dropout: bool = True) -> None:
    """Make the DPO reference of a PEFT policy the base (`None`) or base + `reference_adapter` (frozen).

    `DPOTrainer` zeroes dropout when it is built; the reference adapter loaded afterwards gets the same treatment,
    or its LoRA dropout would make the reference log-probs noisy.
    """
    import torch

    if REFERENCE_ADAPTER in model.peft_config:
        model.delete_adapter(REFERENCE_ADAPTER)
    if reference_adapter is None:
        return
    model.load_adapter(reference_adapter, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    if disable_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0


def summarize_logs(log_history: list[dict], train_loss: float, steps: int) -> dict[str, Any]:
    """Flat metrics of a run: `train_loss` (mean over the run), `final_loss` (last logged), `steps`,
    `train_runtime` (s), and the means over logged steps of DPO's `rewards/accuracies`, `rewards/margins`,
    `rewards/chosen`, `rewards/rejected` or SFT's `mean_token_accuracy`."""
    step_logs = [log for log in log_history if "loss" in log]
    metrics: dict[str, Any] = {
        "train_loss": float(train_loss),
        "final_loss": float(step_logs[-1]["loss"]) if step_logs else float(train_loss),
        "steps": int(steps),
    }
    summary = next((log for log in reversed(log_history) if "train_runtime" in log), {})
    if "train_runtime" in summary:
        metrics["train_runtime"] = float(summary["train_runtime"])
    for key in MEAN_LOGGED:
        values = [float(log[key]) for log in step_logs if key in log and not math.isnan(float(log[key]))]
        if values:
            metrics[key] = sum(values) / len(values)
    return metrics


def _save_adapter(trainer, model_args, workdir: Path, metrics, method, init_adapter, reference_adapter) -> None:
    """Save the trained adapter only (the reference adapter is dropped first) with the tokenizer and the metrics."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if REFERENCE_ADAPTER in model.peft_config:
        model.delete_adapter(REFERENCE_ADAPTER)
    trainer.save_model(str(workdir))
    if trainer.accelerator.is_main_process:
        _record_base(workdir, model_args.model_name_or_path)
        record = {
            "method": method,
            "base_model": model_args.model_name_or_path,
            "base_revision": model_args.model_revision,
            "init_adapter": init_adapter,
            "reference_adapter": reference_adapter,
            "metrics": metrics,
        }
        (workdir / METRICS_FILE).write_text(json.dumps(record, indent=2))


def _release(trainer) -> None:
    """Free the policy now: the loop samples with the new adapter next, in the same process."""
    import gc

    import torch

    trainer.accelerator.free_memory()
    trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _record_base(workdir: Path, base: str) -> None:
    """Name the base as the recipe does (e.g. `embedded:smollm2-135m-instruct`), not by a machine's cache path."""
    path = workdir / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _publish(workdir: Path, target: Path) -> None:
    """Move the finished folder into place; an existing folder is set aside first and removed after."""
    stale = None
    if target.exists():
        stale = target.with_name(f".{target.name}-old-{uuid.uuid4().hex[:8]}")
        os.replace(target, stale)
    os.replace(workdir, target)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)
