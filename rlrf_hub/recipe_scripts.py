"""What the TRL-style training scripts under `recipes/` share: each is `make_parser()` plus
`main(script_args, training_args, model_args)`, and leaves the dataset mixture, model loading (the embedded model
names included) and saving (an adapter, merged into its base on request) to this module."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from trl import ScriptArguments

from .models import resolve_model
from .training import load_tokenizer as load_tokenizer

ADAPTER_SUBDIR = "adapter"


@dataclass
class MixtureScriptArguments(ScriptArguments):
    """TRL's script arguments plus a dataset mixture and what to write at the end.

    Parameters:
        dataset_mixture: list of `rlrf_hub.mixtures.MixtureSource` mappings; when set, `dataset_name` is ignored.
        merge_adapter: with LoRA/QLoRA, merge the trained adapter into a full-precision copy of the base and save
            that model to `output_dir` (the adapter goes to `output_dir/adapter`); otherwise save only the adapter.
    """

    dataset_mixture: list[dict] = field(
        default_factory=list, metadata={"help": "Datasets to mix (YAML only): id|path, config, split, format, fields."}
    )
    merge_adapter: bool = field(
        default=True, metadata={"help": "Merge a LoRA/QLoRA adapter into the base and save a full model."}
    )


def load_training_data(script_args: MixtureScriptArguments, kind: str):
    """The mixture when `dataset_mixture` is set, else `dataset_name` read as a single source of the mixture."""
    from .mixtures import load_mixture

    if script_args.dataset_mixture:
        return load_mixture(script_args.dataset_mixture, kind)
    if not script_args.dataset_name:
        raise ValueError("dataset_mixture or dataset_name is required")
    is_local = Path(script_args.dataset_name).exists()
    source = {
        "path" if is_local else "id": script_args.dataset_name,
        "config": script_args.dataset_config,
        "split": script_args.dataset_train_split,
        "format": "messages" if kind == "sft" else "preference",
    }
    return load_mixture([source], kind)


def model_init_kwargs(model_args, training_args) -> dict:
    """How TRL's own scripts load the model, plus the embedded model names of this project."""
    from trl import get_quantization_config

    kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = quantized_device_map(training_args)
    kwargs.update(training_args.model_init_kwargs or {})
    return kwargs


def quantized_device_map(training_args) -> dict | None:
    """bitsandbytes quantizes while loading, so a 4-bit model goes to this process's device at once; FSDP and
    DeepSpeed place parameters themselves (FSDP with QLoRA needs `bnb_4bit_quant_storage` set to the dtype)."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState()
    shards = state.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if training_args.use_cpu or state.device.type == "cpu" or shards or training_args.fsdp or training_args.deepspeed:
        return None
    return {"": state.local_process_index}


def merge_into_base(adapter_dir: Path, output_dir: Path, model_args, auto_class, **load_kwargs) -> None:
    """Load the base unquantized in the recipe's dtype, apply the adapter, merge it, and save a plain model."""
    from peft import PeftModel

    base = auto_class.from_pretrained(
        resolve_model(model_args.model_name_or_path),
        revision=model_args.model_revision,
        dtype=model_args.dtype if model_args.dtype not in (None, "auto") else "float32",
        **load_kwargs,
    )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(output_dir), safe_serialization=True)


def save_outputs(trainer, training_args, model_args, script_args, auto_class, **load_kwargs) -> dict:
    """Save the trained model (or adapter + merged model) and the tokenizer; returns where things went."""
    output_dir = Path(training_args.output_dir)
    peft = model_args.use_peft
    target = output_dir / ADAPTER_SUBDIR if peft and script_args.merge_adapter else output_dir
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(target))
    written = {"output_dir": str(output_dir), "adapter_dir": str(target) if peft else None}
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(str(output_dir))
        if peft and script_args.merge_adapter:
            merge_into_base(target, output_dir, model_args, auto_class, **load_kwargs)
        metrics = {k: v for k, v in trainer.state.log_history[-1].items()} if trainer.state.log_history else {}
        (output_dir / "training_metrics.json").write_text(json.dumps({**written, "metrics": metrics}, indent=2))
    trainer.accelerator.wait_for_everyone()
    return written


def finish(trainer, script_args, training_args, written: dict, num_examples: int) -> dict:
    """Push to the Hub when asked, and print and return what was written and how long training ran."""
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    result = {**written, "num_examples": num_examples, "steps": trainer.state.global_step}
    trainer.accelerator.print(json.dumps(result, indent=2))
    return result


def make_parser(
    command: str,
    help_text: str,
    dataclass_types: tuple,
    subparsers: argparse._SubParsersAction | None = None,
    prog: str | None = None,
):
    """TRL's parser over `dataclass_types`, standalone or as the subcommand `command` of `subparsers`."""
    from trl import TrlParser

    if subparsers is not None:
        return subparsers.add_parser(command, help=help_text, dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog)
