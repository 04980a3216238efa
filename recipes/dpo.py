"""Train one RLRF adapter on a pairs dataset with DPO (or rejection sampling), TRL-script style.

The dataset is a PAIRS dataset written by the pairing stage: a local folder (`save_to_disk` or data files), a
`.jsonl`/`.json`/`.parquet` file, or a Hub dataset id (`--dataset_config`/`--dataset_train_split` as usual). Its
conversational `prompt`/`chosen`/`rejected` columns are trained on; the bookkeeping columns are dropped. Only the
LoRA adapter and the tokenizer are written to `--output_dir`.

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

DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class AdapterArguments:
    """Which adapter to start from, which model is the DPO reference, and how to train.

    Parameters:
        init_adapter: an adapter folder or Hub id to continue training (the previous iteration's); a fresh LoRA
            from the LoRA arguments when unset.
        reference_adapter: the DPO reference is the base plus this adapter (frozen); the base itself when unset.
        method: `dpo`, or `rs` for rejection sampling (SFT on `prompt` -> `chosen`).
    """

    init_adapter: str | None = field(default=None, metadata={"help": "Adapter to continue training."})
    reference_adapter: str | None = field(
        default=None, metadata={"help": "DPO reference = base + this adapter; the base when unset."}
    )
    method: str = field(default="dpo", metadata={"help": "`dpo` or `rs` (SFT on chosen).", "choices": ["dpo", "rs"]})


def load_pairs(script_args):
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
        script_args.dataset_name, name=script_args.dataset_config, split=script_args.dataset_train_split
    )


def main(script_args, training_args, model_args, adapter_args: AdapterArguments | None = None):
    from rlrf_hub.config import Recipe, RLRFArguments
    from rlrf_hub.training import train_adapter

    if not script_args.dataset_name:
        raise ValueError("dataset_name is required: a pairs folder, file or Hub dataset id")
    adapter_args = adapter_args or AdapterArguments()
    result = train_adapter(
        load_pairs(script_args),
        Recipe(RLRFArguments(), model_args, training_args),
        training_args.output_dir,
        init_adapter=adapter_args.init_adapter,
        reference_adapter=adapter_args.reference_adapter,
        method=adapter_args.method,
    )
    print(json.dumps({"adapter_dir": result.adapter_dir, "method": result.method, **result.metrics}, indent=2))
    return result


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    from trl import DPOConfig, ModelConfig, ScriptArguments, TrlParser

    dataclass_types = (ScriptArguments, DPOConfig, ModelConfig, AdapterArguments)
    if subparsers is not None:
        return subparsers.add_parser("dpo", help="Train an RLRF adapter with DPO", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
