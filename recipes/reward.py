"""Train a scalar reward model on preference pairs, TRL-script style (TRL `RewardTrainer`).

The paper's reward model is the chat model with a one-output head, trained on a mixture of public preference data
(HH-RLHF, Summarize from Feedback, WebGPT, StackExchange, SHP, UltraFeedback). `dataset_mixture` lists those
datasets (see `rlrf_hub.mixtures.MixtureSource`, formats `preference` and `pairwise`); each becomes `chosen` /
`rejected` conversations, the same chat-template rendering `rlrf_hub.reward.RewardScorer` uses when the loop scores
(prompt, response) pairs.

`output_dir` ends up as a plain `AutoModelForSequenceClassification` folder with `num_labels=1`, its tokenizer and
a pad token: set it as the loop's `reward_model`. With LoRA/QLoRA the adapter (task type `SEQ_CLS`, so the score
head is trained and saved with it) goes to `output_dir/adapter` and is merged into a full-precision copy of the base.

# QLoRA reward model on CPU on the HH-RLHF test pairs of ../shared/data
```bash
accelerate launch --config_file recipes/accelerate_configs/cpu.yaml recipes/reward.py \
    --config recipes/smollm2-135m-cpu/reward.yaml
```

# The paper's reward model on Llama-2-13b-chat (8 GPUs, QLoRA with FSDP)
```bash
accelerate launch --config_file recipes/accelerate_configs/fsdp_qlora.yaml recipes/reward.py \
    --config recipes/llama-2-13b-chat/config_reward.yaml
```
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sft import MixtureScriptArguments, load_training_data, model_init_kwargs, save_outputs  # noqa: E402

REWARD_TASK_TYPE = "SEQ_CLS"


def main(script_args: MixtureScriptArguments, training_args, model_args):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardTrainer, get_peft_config

    from rlrf_hub.models import resolve_model

    if model_args.use_peft and model_args.lora_task_type != REWARD_TASK_TYPE:
        model_args = dataclasses.replace(model_args, lora_task_type=REWARD_TASK_TYPE)
    dataset = load_training_data(script_args, "preference")
    model_path = resolve_model(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=model_args.model_revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=1, **model_init_kwargs(model_args, training_args)
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    training_args.model_init_kwargs = None
    trainer = RewardTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    written = save_outputs(
        trainer,
        training_args,
        model_args,
        script_args,
        AutoModelForSequenceClassification,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    result = {**written, "num_examples": len(dataset), "steps": trainer.state.global_step}
    trainer.accelerator.print(json.dumps(result, indent=2))
    return result


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    from trl import ModelConfig, RewardConfig, TrlParser

    dataclass_types = (MixtureScriptArguments, RewardConfig, ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser("reward", help="Train a reward model", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
