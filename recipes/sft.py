"""Supervised fine-tuning on a dataset mixture, TRL-script style: the joint SFT that makes M0 and the feedback model.

In the paper one network is both the starting policy M0 and the feedback model: a chat model fine-tuned on
instructions, feedback examples (general, math with a reference, biographies with a reference) and refinement
examples. `dataset_mixture` lists those datasets (see `rlrf_hub.mixtures.MixtureSource`); each becomes
prompt/completion rows, so the loss is on the answers only. The `rlrf_feedback`, `rlrf_selection` and
`rlrf_refinements` formats read the stage datasets of an RLRF run and write the judge's and the policy's prompts
exactly as the loop does, which is what the feedback model must learn to answer.

With LoRA/QLoRA (`use_peft`) the adapter is trained and, by default (`merge_adapter`), merged into a full-precision
copy of the base, so `output_dir` holds a plain model that `rlrf-hub run` takes as `model_name_or_path` and
`feedback_model`; the adapter itself stays in `output_dir/adapter`. Full-parameter training writes the model directly.

# QLoRA SFT on CPU with the embedded SmolLM2-135M-Instruct
```bash
accelerate launch --config_file recipes/accelerate_configs/cpu.yaml recipes/sft.py \
    --config recipes/smollm2-135m-cpu/sft.yaml
```

# The paper's joint SFT of Llama-2-13b-chat, QLoRA on one GPU or full-parameter with DeepSpeed ZeRO-3
```bash
accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml recipes/sft.py \
    --config recipes/llama-2-13b-chat/config_sft_qlora.yaml
accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero3.yaml recipes/sft.py \
    --config recipes/llama-2-13b-chat/config_sft_full.yaml
```
"""

from __future__ import annotations

import argparse

from rlrf_hub import recipe_scripts
from rlrf_hub.recipe_scripts import MixtureScriptArguments


def main(script_args: MixtureScriptArguments, training_args, model_args):
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer, get_peft_config

    from rlrf_hub.models import resolve_model

    dataset = recipe_scripts.load_training_data(script_args, "sft")
    tokenizer = recipe_scripts.load_tokenizer(model_args)
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model(model_args.model_name_or_path), **recipe_scripts.model_init_kwargs(model_args, training_args)
    )
    training_args.model_init_kwargs = None
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    written = recipe_scripts.save_outputs(trainer, training_args, model_args, script_args, AutoModelForCausalLM)
    return recipe_scripts.finish(trainer, script_args, training_args, written, len(dataset))


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    from trl import ModelConfig, SFTConfig

    dataclass_types = (MixtureScriptArguments, SFTConfig, ModelConfig)
    return recipe_scripts.make_parser("sft", "Joint SFT on a dataset mixture", dataclass_types, subparsers, prog)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
