"""Train one RLRF adapter on a pairs dataset with DPO (or rejection sampling), TRL-script style.

The dataset is a PAIRS dataset written by the pairing stage: a local folder (`save_to_disk` or data files), a
`.jsonl`/`.json`/`.parquet` file, or a Hub dataset id (`--dataset_config`/`--dataset_train_split`/`--dataset_revision`;
a run's pairs repo is tagged `iter-<t>`). Its conversational `prompt`/`chosen`/`rejected` columns are trained on; the
bookkeeping columns are dropped. With LoRA/QLoRA (`use_peft: true`, the loop's way) only the adapter and the tokenizer
are written to `--output_dir`; with `use_peft: false` the whole model is trained and written.

# QLoRA DPO on CPU with the embedded SmolLM2-135M-Instruct
```bash
accelerate launch --config_file recipes/accelerate_configs/cpu.yaml recipes/dpo.py \
    --config recipes/smollm2-135m-cpu/dpo.yaml \
    --dataset_name runs/smollm2-135m-cpu/iter-0/pairs --output_dir runs/my-adapters/M1
```

# Second iteration: continue M1, with M1 as the DPO reference (M0, the base, when `--reference_adapter` is unset)
```bash
accelerate launch recipes/dpo.py --config recipes/smollm2-135m-cpu/dpo.yaml \
    --dataset_name runs/smollm2-135m-cpu/iter-1/pairs --output_dir runs/my-adapters/M2 \
    --init_adapter runs/my-adapters/M1 --reference_adapter runs/my-adapters/M1
```

# Rejection sampling (SFT on the chosen responses) instead of DPO
```bash
python recipes/dpo.py --config recipes/smollm2-135m-cpu/dpo.yaml --method rs \
    --dataset_name runs/smollm2-135m-cpu/iter-0/pairs --output_dir runs/my-adapters/M1-rs
```

# Full-parameter DPO (`use_peft: false`): the whole model is trained and saved; the reference is a frozen copy of
# the starting model, or `--ref_model_name_or_path` (for M2 with M1 as reference). Shard it with ZeRO-3 or FSDP.
```bash
accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero3.yaml recipes/dpo.py \
    --config recipes/llama-2-13b-chat/config_dpo_full.yaml --dataset_name you/run-pairs --dataset_revision iter-0
```

# On GPUs, any chat model (QLoRA, one process per GPU)
```bash
accelerate launch --multi_gpu --num_processes 8 recipes/dpo.py \
    --dataset_name you/rlrf-pairs --model_name_or_path meta-llama/Llama-2-13b-chat-hf \
    --load_in_4bit --use_peft --lora_r 16 --lora_alpha 32 --lora_target_modules all-linear \
    --dtype bfloat16 --bf16 --beta 0.1 --learning_rate 2e-6 --lr_scheduler_type cosine \
    --per_device_train_batch_size 4 --gradient_accumulation_steps 8 --output_dir runs/my-adapters/M1
```
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from rlrf_hub import recipe_scripts

DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class AdapterArguments:
    """Which adapter to start from, which model is the DPO reference, and how to train.

    Parameters:
        init_adapter: an adapter folder or Hub id to continue training (the previous iteration's); a fresh LoRA
            from the LoRA arguments when unset.
        reference_adapter: the DPO reference is the base plus this adapter (frozen); the base itself when unset.
        method: `dpo`, or `rs` for rejection sampling (SFT on `prompt` -> `chosen`).
        dataset_revision: the revision (branch, tag such as `iter-0`, or commit) of a Hub pairs dataset.
        ref_model_name_or_path: full-parameter DPO only: the frozen reference model; the starting model when unset.
    """

    init_adapter: str | None = field(default=None, metadata={"help": "Adapter to continue training."})
    reference_adapter: str | None = field(
        default=None, metadata={"help": "DPO reference = base + this adapter; the base when unset."}
    )
    method: str = field(default="dpo", metadata={"help": "`dpo` or `rs` (SFT on chosen).", "choices": ["dpo", "rs"]})
    dataset_revision: str | None = field(default=None, metadata={"help": "Revision of a Hub pairs dataset."})
    ref_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Full-parameter DPO: the reference model; the starting model when unset."}
    )


def load_pairs(script_args, revision: str | None = None):
    """The train split of a pairs dataset given as a `save_to_disk` folder, a data file, a data folder or a Hub id."""
    from datasets import load_dataset, load_from_disk

    path = Path(script_args.dataset_name)
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        dataset = load_from_disk(str(path))
        return dataset[script_args.dataset_train_split] if hasattr(dataset, "keys") else dataset
    if path.is_file():
        builder = DATA_FILE_BUILDERS.get(path.suffix)
        if builder is None:
            raise ValueError(f"dataset_name: cannot read {path}; use one of {sorted(DATA_FILE_BUILDERS)}")
        return load_dataset(builder, data_files=str(path), split="train")
    return load_dataset(
        script_args.dataset_name,
        name=script_args.dataset_config,
        split=script_args.dataset_train_split,
        revision=revision,
    )


def main(script_args, training_args, model_args, adapter_args: AdapterArguments | None = None):
    if not script_args.dataset_name:
        raise ValueError("dataset_name is required: a pairs folder, file or Hub dataset id")
    adapter_args = adapter_args or AdapterArguments()
    pairs = load_pairs(script_args, adapter_args.dataset_revision)
    if not model_args.use_peft:
        return train_full(pairs, training_args, model_args, adapter_args)
    from rlrf_hub.training import train_adapter

    result = train_adapter(
        pairs,
        model_args,
        training_args,
        training_args.output_dir,
        init_adapter=adapter_args.init_adapter,
        reference_adapter=adapter_args.reference_adapter,
        method=adapter_args.method,
    )
    print(json.dumps({"adapter_dir": result.adapter_dir, "method": result.method, **result.metrics}, indent=2))
    return result


def train_full(pairs, training_args, model_args, adapter_args: AdapterArguments) -> dict:
    """Full-parameter DPO (or RS) of `model_name_or_path`, as TRL's own DPO script does it, with a frozen copy of
    the starting model (or `ref_model_name_or_path`) as the DPO reference. Writes the whole model and the tokenizer."""
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer, SFTTrainer

    from rlrf_hub.models import resolve_model

    if adapter_args.init_adapter or adapter_args.reference_adapter:
        raise ValueError(
            "init_adapter / reference_adapter need use_peft: true; full-parameter DPO continues from "
            "model_name_or_path and takes its reference from ref_model_name_or_path"
        )
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise ValueError("load_in_4bit / load_in_8bit need use_peft: true (a quantized model cannot be trained fully)")
    tokenizer = recipe_scripts.load_tokenizer(model_args)
    init_kwargs = recipe_scripts.model_init_kwargs(model_args, training_args)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(model_args.model_name_or_path), **init_kwargs)
    training_args.model_init_kwargs = None
    if adapter_args.method == "rs":
        dataset = pairs.select_columns(["prompt", "chosen"]).rename_column("chosen", "completion")
        args = sft_config(training_args)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    else:
        ref_model = None
        if adapter_args.ref_model_name_or_path:
            ref_path = resolve_model(adapter_args.ref_model_name_or_path)
            ref_model = AutoModelForCausalLM.from_pretrained(ref_path, **{**init_kwargs, "revision": None})
        dataset = pairs.select_columns(["prompt", "chosen", "rejected"])
        if not all(dataset["rejected"]):
            raise ValueError("pairs with an empty `rejected` (rejection-sampling rows) need --method rs")
        trainer = DPOTrainer(
            model=model, ref_model=ref_model, args=training_args, train_dataset=dataset, processing_class=tokenizer
        )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(training_args.output_dir)
    result = {"model_dir": training_args.output_dir, "method": adapter_args.method, "steps": trainer.state.global_step}
    trainer.accelerator.print(json.dumps(result, indent=2))
    return result


def sft_config(training_args):
    """An `SFTConfig` with the DPO config's `TrainingArguments` fields and sequence length (RS is SFT on chosen)."""
    import dataclasses

    from transformers import TrainingArguments
    from trl import SFTConfig

    shared = {f.name for f in dataclasses.fields(TrainingArguments) if f.init} | {"max_length"}
    values = {f.name: getattr(training_args, f.name) for f in dataclasses.fields(training_args) if f.name in shared}
    return SFTConfig(**values)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    from trl import DPOConfig, ModelConfig, ScriptArguments

    dataclass_types = (ScriptArguments, DPOConfig, ModelConfig, AdapterArguments)
    return recipe_scripts.make_parser("dpo", "Train an RLRF adapter with DPO", dataclass_types, subparsers, prog)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
