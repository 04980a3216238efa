"""Adapter training on the tiny model: QLoRA and LoRA DPO, the choice of reference, rejection sampling, the recipe."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlrf_hub.models import TINY_MODEL, prepare_tiny_model
from rlrf_hub.schemas import to_dataset
from rlrf_hub.training import METRICS_FILE, train_adapter

REPO = Path(__file__).resolve().parents[1]
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def pair_row(i: int, rejected: bool = True) -> dict:
    a, b = i + 2, 3 * i + 1
    wrong = [{"role": "assistant", "content": f"That is {a + b} pens, since we add them."}]
    return {
        "prompt_id": f"p{i}",
        "iteration": 0,
        "pairing": "rlrf" if rejected else "rs",
        "prompt": [{"role": "user", "content": f"A shop sells {a} boxes of {b} pens. How many pens is that?"}],
        "chosen": [{"role": "assistant", "content": f"{a} boxes times {b} pens each gives {a * b} pens."}],
        "rejected": wrong if rejected else [],
        "chosen_id": f"p{i}-c",
        "rejected_id": f"p{i}-r" if rejected else "",
        "chosen_origin": "refinement",
        "rejected_origin": "candidate" if rejected else "",
        "chosen_ratings": [1],
        "rejected_ratings": [-1] if rejected else [],
        "chosen_reward": 1.0,
        "rejected_reward": -1.0 if rejected else 0.0,
    }


def make_args(load_in_4bit: bool, max_steps: int = 2):
    from trl import DPOConfig, ModelConfig

    model = ModelConfig(
        model_name_or_path=TINY_MODEL,
        load_in_4bit=load_in_4bit,
        use_peft=True,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        lora_target_modules="all-linear",
    )
    training = DPOConfig(
        output_dir="unused",
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        beta=0.1,
        max_length=128,
        logging_steps=1,
        report_to="none",
        seed=0,
    )
    return model, training


def lora_b(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS))
    return {name: tensor.float() for name, tensor in weights.items() if "lora_B" in name}


def first_step(result) -> dict:
    return next(log for log in result.log_history if log.get("step") == 1 and "loss" in log)


@pytest.fixture(scope="module")
def pairs():
    return to_dataset("pairs", [pair_row(i) for i in range(8)])


@pytest.fixture(scope="module")
def qlora_result(pairs, tmp_path_factory):
    prepare_tiny_model()
    return train_adapter(pairs, *make_args(load_in_4bit=True), tmp_path_factory.mktemp("m1") / "adapter")


def test_qlora_dpo_writes_a_trained_loadable_adapter(qlora_result):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = Path(qlora_result.adapter_dir)
    assert qlora_result.method == "dpo"
    assert (adapter / ADAPTER_WEIGHTS).is_file() and (adapter / "tokenizer.json").is_file()
    assert not (adapter / "ref").exists(), "the reference adapter must not be saved with the policy"
    assert [p.name for p in adapter.parent.iterdir()] == ["adapter"], "no partial folder may be left behind"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == TINY_MODEL and config["r"] == 8

    base = AutoModelForCausalLM.from_pretrained(prepare_tiny_model())
    model = PeftModel.from_pretrained(base, str(adapter))
    loaded = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert len(loaded) == 14  # q, k, v, o, gate, up, down in each of the 2 layers
    assert all(p.abs().sum() > 0 for p in loaded.values()), "LoRA B starts at zero; training must move it"

    metrics = qlora_result.metrics
    assert metrics["steps"] == 2 and metrics["num_examples"] == 8 and metrics["train_runtime"] > 0
    assert math.isfinite(metrics["final_loss"]) and math.isfinite(metrics["train_loss"])
    assert 0.0 <= metrics["rewards/accuracies"] <= 1.0
    assert "rewards/margins" in metrics
    record = json.loads((adapter / METRICS_FILE).read_text())
    assert record["method"] == "dpo" and record["reference_adapter"] is None


def test_fresh_adapter_is_measured_against_the_base(qlora_result):
    """At step 1 the fresh adapter is a no-op, so with the base as reference every implicit reward is 0."""
    step = first_step(qlora_result)
    assert step["rewards/chosen"] == 0.0 and step["rewards/rejected"] == 0.0
    assert step["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_lora_dpo_continues_an_adapter_against_itself_as_reference(pairs, qlora_result, tmp_path):
    m1 = qlora_result.adapter_dir
    args = make_args(load_in_4bit=False)
    result = train_adapter(pairs, *args, tmp_path / "m2", init_adapter=m1, reference_adapter=m1)

    step = first_step(result)
    assert step["rewards/chosen"] == 0.0 and step["rewards/margins"] == 0.0, "policy and reference start equal"
    before, after = lora_b(m1), lora_b(result.adapter_dir)
    assert before.keys() == after.keys()
    assert any(not torch.allclose(before[k], after[k]) for k in before), "training must change M1's weights"
    saved = {p.name for p in (tmp_path / "m2").iterdir()}
    assert {"adapter_config.json", ADAPTER_WEIGHTS, "tokenizer.json", METRICS_FILE} <= saved
    assert not any(p.is_dir() for p in (tmp_path / "m2").iterdir()), "only the trained adapter is saved"
    assert json.loads((tmp_path / "m2" / METRICS_FILE).read_text())["init_adapter"] == m1


def test_continued_adapter_with_base_reference_starts_with_nonzero_rewards(pairs, qlora_result, tmp_path):
    args = make_args(load_in_4bit=False, max_steps=1)
    result = train_adapter(pairs, *args, tmp_path / "m2", init_adapter=qlora_result.adapter_dir)
    step = first_step(result)
    assert step["rewards/chosen"] != 0.0 and step["rewards/rejected"] != 0.0, "reference must be the base, not M1"


def test_rejection_sampling_trains_on_chosen_only(tmp_path):
    rs_pairs = to_dataset("pairs", [pair_row(i, rejected=False) for i in range(8)])
    result = train_adapter(rs_pairs, *make_args(load_in_4bit=True), tmp_path / "rs", method="rs")

    assert result.method == "rs" and result.metrics["steps"] == 2
    assert math.isfinite(result.metrics["train_loss"]) and "mean_token_accuracy" in result.metrics
    assert not any(key.startswith("rewards/") for key in result.metrics)
    assert all(t.abs().sum() > 0 for t in lora_b(result.adapter_dir).values())


def test_dpo_refuses_rows_without_rejected(tmp_path):
    rows = [pair_row(0), pair_row(1, rejected=False)]
    with pytest.raises(ValueError, match="empty `rejected`"):
        train_adapter(to_dataset("pairs", rows), *make_args(load_in_4bit=False), tmp_path / "x")
    with pytest.raises(ValueError, match="method"):
        train_adapter(to_dataset("pairs", rows), *make_args(load_in_4bit=False), tmp_path / "x", method="ppo")


def test_failed_training_leaves_the_previous_adapter_untouched(pairs, tmp_path):
    target = tmp_path / "m1"
    target.mkdir()
    (target / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="adapter_config.json"):
        train_adapter(pairs, *make_args(load_in_4bit=False), target, init_adapter=str(tmp_path / "missing"))
    assert [p.name for p in tmp_path.iterdir()] == ["m1"]
    assert (target / "adapter_config.json").read_text() == "{}"


def load_recipe_script():
    spec = importlib.util.spec_from_file_location("rlrf_recipe_dpo", REPO / "recipes" / "dpo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_recipe_script_parses_the_cpu_yaml_and_trains(pairs, tmp_path):
    data = tmp_path / "pairs.parquet"
    pairs.to_parquet(str(data))
    output = tmp_path / "adapter"
    output.mkdir()
    (output / "stale.txt").write_text("from an earlier run")
    script = load_recipe_script()
    config = REPO / "recipes" / "smollm2-135m-cpu" / "dpo.yaml"
    overrides = f"--model_name_or_path {TINY_MODEL} --max_steps 1 --max_length 128 --output_dir {output}"
    args = ["--config", str(config), "--dataset_name", str(data), *overrides.split()]
    script_args, training_args, model_args, adapter_args = script.make_parser().parse_args_and_config(args)

    assert model_args.load_in_4bit and model_args.use_peft and model_args.lora_target_modules == "all-linear"
    assert training_args.beta == 0.1 and training_args.lr_scheduler_type == "cosine" and training_args.use_cpu
    assert training_args.max_steps == 1 and adapter_args.method == "dpo" and adapter_args.reference_adapter is None

    result = script.main(script_args, training_args, model_args, adapter_args)
    assert result.adapter_dir == str(output) and result.metrics["steps"] == 1
    assert (output / ADAPTER_WEIGHTS).is_file() and not (output / "stale.txt").exists()
