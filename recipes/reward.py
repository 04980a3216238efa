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

from rlrf_hub import recipe_scripts
from rlrf_hub.recipe_scripts import MixtureScriptArguments

REWARD_TASK_TYPE = "SEQ_CLS"


def main(script_args: MixtureScriptArguments, training_args, model_args):
    from transformers import AutoModelForSequenceClassification
    from trl import RewardTrainer, get_peft_config

    from rlrf_hub.models import resolve_model

    if model_args.use_peft and model_args.lora_task_type != REWARD_TASK_TYPE:
        model_args = dataclasses.replace(model_args, lora_task_type=REWARD_TASK_TYPE)
    dataset = recipe_scripts.load_training_data(script_args, "preference")
    tokenizer = recipe_scripts.load_tokenizer(model_args)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model(model_args.model_name_or_path),
        num_labels=1,
        **recipe_scripts.model_init_kwargs(model_args, training_args),
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
    written = recipe_scripts.save_outputs(
        trainer,
        training_args,
        model_args,
        script_args,
        AutoModelForSequenceClassification,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    return recipe_scripts.finish(trainer, script_args, training_args, written, len(dataset))


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    from trl import ModelConfig, RewardConfig

    dataclass_types = (MixtureScriptArguments, RewardConfig, ModelConfig)
    return recipe_scripts.make_parser("reward", "Train a reward model", dataclass_types, subparsers, prog)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
