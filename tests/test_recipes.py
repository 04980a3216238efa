"""Recipes cannot rot: every YAML under recipes/ is parsed by the real parser it belongs to, every accelerate config is
loaded by accelerate's own loader, and one recipe per script and pairing shape runs on the tiny model.

Which parser a recipe belongs to is read from its name: `dpo.yaml`/`config_dpo*.yaml` -> recipes/dpo.py,
`sft.yaml`/`config_sft*.yaml` -> recipes/sft.py, `reward.yaml`/`config_reward*.yaml` -> recipes/reward.py, any other
name -> `rlrf-hub run` (`rlrf_hub.config.parse_recipe`). The parsers reject unknown keys, so a key that TRL or
transformers renames fails here. This machine has no GPU: `bf16` and `use_cpu` are overridden everywhere.

The paper recipes read Hub dataset ids. Nothing is downloaded here: small stand-ins with the same layout (ids,
configs, splits, columns), made from ../shared/data, are pushed under those ids to an offline Hub first, and the
smoke runs publish their stages to it, so the SFT and DPO recipes read the loop's output by repo and tag as they
would on the real Hub.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
import sys
from pathlib import Path

import datasets
import pytest
import yaml
from conftest import REPO, hf_clients

RECIPES = REPO / "recipes"
PAPER = RECIPES / "llama-2-13b-chat"
SCRIPTS = ("dpo", "sft", "reward")
MIXTURE_KIND = {"sft": "sft", "reward": "preference"}
NO_GPU = ["--bf16", "false", "--use_cpu", "true"]
NAMESPACE = "YOUR_NAMESPACE"
RECIPE_FILES = sorted(p for p in RECIPES.rglob("*.yaml") if "accelerate_configs" not in p.parts)
ACCELERATE_CONFIGS = sorted((RECIPES / "accelerate_configs").glob("*.yaml"))
TABLE_2 = {
    "config_m1_dpo.yaml": ("rlrf", 1),
    "config_m1_rs.yaml": ("rs", 1),
    "config_m2_dpo_dpo.yaml": ("rlrf", 2),
    "config_m2_rs_dpo.yaml": ("rs,rlrf", 2),
    "config_m1_dpo_reward_only.yaml": ("reward_only", 1),
}


def script_of(path: Path) -> str | None:
    """The training script a recipe belongs to, or None for a loop recipe."""
    head = path.stem.removeprefix("config_").split("_")[0]
    return head if head in SCRIPTS else None


def recipe_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@functools.cache
def script(name: str):
    spec = importlib.util.spec_from_file_location(f"rlrf_recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def parse(path: Path, *overrides: str):
    """The recipe parsed by its own parser: a `Recipe` for the loop, the dataclass tuple for a script."""
    kind = script_of(path)
    if kind is None:
        from rlrf_hub.config import parse_recipe

        return parse_recipe(["--config", str(path), *NO_GPU, *overrides])
    return script(kind).make_parser().parse_args_and_config(["--config", str(path), *NO_GPU, *overrides])


def edited_copy(path: Path, folder: Path, edit) -> Path:
    """A copy of a recipe with `edit(values)` applied, for changes the command line cannot make (lists of sources)."""
    values = yaml.safe_load(path.read_text())
    edit(values)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    target.write_text(yaml.safe_dump(values, sort_keys=False))
    return target


def flags(**values) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


# Parsing ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", RECIPE_FILES, ids=recipe_id)
def test_every_recipe_parses_with_its_own_parser(recipe, monkeypatch):
    monkeypatch.chdir(REPO)
    kind = script_of(recipe)
    parsed = parse(recipe)
    if kind is None:
        assert parsed.rlrf.prompt_sources and parsed.training.output_dir
        return
    script_args, training_args, model_args = parsed[:3]
    assert model_args.model_name_or_path and training_args.output_dir
    if kind == "dpo":
        assert script_args.dataset_name
    else:
        from rlrf_hub.mixtures import as_sources

        assert as_sources(script_args.dataset_mixture, MIXTURE_KIND[kind])


@pytest.mark.parametrize(
    "recipe",
    [PAPER / "config_m2_dpo_dpo.yaml", PAPER / "config_dpo_qlora.yaml", PAPER / "config_sft_qlora.yaml"]
    + [PAPER / "config_reward.yaml"],
    ids=recipe_id,
)
def test_a_key_renamed_upstream_fails_the_parse(recipe, tmp_path, monkeypatch):
    """`warmup_ratio` was a `TrainingArguments` field until transformers 5 folded it into `warmup_steps`."""
    monkeypatch.chdir(REPO)
    stale = edited_copy(recipe, tmp_path, lambda values: values.update(warmup_ratio=0.1))
    with pytest.raises((ValueError, SystemExit)) as error:
        parse(stale)
    assert "warmup_ratio" in str(error.value)


def test_paper_loop_recipes_carry_the_papers_settings(monkeypatch):
    monkeypatch.chdir(REPO)
    for name, (pairing, iterations) in TABLE_2.items():
        recipe = parse(PAPER / name)
        r, t, m = recipe.rlrf, recipe.training, recipe.model
        assert (r.pairing, r.num_iterations) == (pairing, iterations), name
        assert (r.num_candidates, r.num_refinements) == (10, 20), name
        assert (r.aspect_mode, r.num_general_aspects, r.verifier_tasks) == ("paper", 3, []), name
        assert (t.beta, t.learning_rate, t.lr_scheduler_type) == (0.1, 2e-6, "cosine"), name
        assert m.load_in_4bit and m.use_peft and m.bnb_4bit_quant_storage == m.dtype == "bfloat16", name
        assert r.reward_model, f"{name}: the paper selects and ranks by reward"
        tasks = {s.task: s for s in r.prompt_sources}
        assert set(tasks) == {"general", "math", "bio"}, name
        assert all(s.reference_field for s in r.prompt_sources if s.task != "general"), name
        assert sum(s.limit for s in r.prompt_sources if s.task == "math") == 10_000, name
        assert [s.limit for s in r.prompt_sources if s.task != "math"] == [60_000, 10_000], name


def test_every_qlora_recipe_stores_4bit_weights_in_its_compute_dtype(monkeypatch):
    """FSDP flattens one dtype per parameter group, so fsdp_qlora.yaml needs `bnb_4bit_quant_storage` = `dtype`."""
    monkeypatch.chdir(REPO)
    for path in sorted(PAPER.glob("*.yaml")):
        parsed = parse(path)
        model_args = parsed.model if script_of(path) is None else parsed[2]
        if model_args.load_in_4bit:
            assert model_args.bnb_4bit_quant_storage == model_args.dtype == "bfloat16", path.name


# Accelerate configs -------------------------------------------------------------------------------------------------

EXPECTED_LAUNCH = {
    "cpu.yaml": ("NO", {}),
    "single_gpu.yaml": ("NO", {}),
    "multi_gpu.yaml": ("MULTI_GPU", {}),
    "deepspeed_zero3.yaml": ("DEEPSPEED", {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}),
    "fsdp.yaml": ("FSDP", {"FSDP_VERSION": "2", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}),
    "fsdp_qlora.yaml": (
        "FSDP",
        {"FSDP_VERSION": "1", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true", "FSDP_USE_ORIG_PARAMS": "false"},
    ),
}


def test_the_accelerate_configs_are_the_documented_set():
    assert sorted(p.name for p in ACCELERATE_CONFIGS) == sorted(EXPECTED_LAUNCH)


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_loads_and_launches_with_accelerates_own_code(config, monkeypatch):
    """Loaded by accelerate's loader (unknown top-level keys fail there), every nested key is one `accelerate launch`
    knows, and the launcher's environment builds accelerate's FSDP plugin (its device check aside: no GPU here)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    loaded = load_config_from_file(str(config))
    distributed_type, expected_env = EXPECTED_LAUNCH[config.name]
    assert str(loaded.distributed_type).rsplit(".", 1)[-1] == distributed_type
    parser = launch_command_parser()
    known = set(vars(parser.parse_args(["train.py"])))
    nested = [k if k.startswith("fsdp") else f"fsdp_{k}" for k in loaded.fsdp_config] + list(loaded.deepspeed_config)
    assert not [k for k in nested if k not in known], "keys `accelerate launch` does not know"

    args, defaults, _ = _validate_launch_command(parser.parse_args(["--config_file", str(config), "train.py"]))
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        env = prepare_deepspeed_cmd_env(args)[1]
    elif args.use_fsdp or args.multi_gpu:
        env = prepare_multi_gpu_env(args)
    else:
        env = {}
    assert {k: env.get(k) for k in expected_env} == expected_env
    if args.use_fsdp:
        from accelerate.utils import FullyShardedDataParallelPlugin

        for key, value in env.items():
            monkeypatch.setenv(key, value)
        # Broadcasting the rank-0 weights (what these two switch on) needs a GPU to build its init function.
        monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")
        monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == int(expected_env["FSDP_VERSION"])
        assert str(plugin.state_dict_type).rsplit(".", 1)[-1] == loaded.fsdp_config["fsdp_state_dict_type"]
    if config.name == "cpu.yaml":
        assert loaded.use_cpu and loaded.num_processes == 1


# Stand-ins for the Hub datasets the paper recipes name ---------------------------------------------------------------


def _jsonl(path: Path, n: int) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line, _ in zip(f, range(n), strict=False)]


def _last_reply(transcript: str) -> str:
    return transcript.rsplit("\n\nAssistant:", 1)[-1].strip()


def stand_ins(data: Path) -> list[tuple[str, dict, list[dict]]]:
    """(repo id, push arguments, rows) of each stand-in, with the columns of the real dataset."""
    seeds = _jsonl(data / "prompts/self_instruct_seed_tasks.jsonl", 8)
    gsm8k = _jsonl(data / "gsm8k/train.jsonl", 6)
    hh = _jsonl(data / "prompts/hh_rlhf_helpful_base_test.jsonl", 8)
    wiki = json.loads((data / "factscore/wikipedia/wikipedia_reference_text.json").read_text())
    bios = [{"name": name, "wikipedia": page["extract"][:400]} for name, page in sorted(wiki.items())[:6]]
    prometheus = json.loads((data / "feedback/prometheus/vicuna_eval.json").read_text())[:6]
    answered = [(s["prompt"], s["instances"][0]["output"]) for s in seeds if s["instances"][0]["output"].strip()]
    pairs = [(h["prompt"], _last_reply(h["chosen"]), _last_reply(h["rejected"])) for h in hh]
    chat = [[{"role": "user", "content": p}, {"role": "assistant", "content": a}] for p, a in answered]
    return [
        (
            "liyucheng/ShareGPT90K",
            {},
            [
                {"id": str(i), "conversations": {"from": ["human", "gpt"], "value": [p, a]}}
                for i, (p, a) in enumerate(answered)
            ],
        ),
        ("openai/gsm8k", {"config_name": "main"}, [{"question": g["question"], "answer": g["answer"]} for g in gsm8k]),
        (
            "DigitalLearningGmbH/MATH-lighteval",
            {},
            [
                {"problem": g["question"], "level": "Level 1", "solution": g["answer"], "type": "Algebra"}
                for g in gsm8k
            ],
        ),
        (f"{NAMESPACE}/rlrf-bio-prompts", {}, bios),
        (
            "HuggingFaceH4/ultrachat_200k",
            {"split": "train_sft"},
            [{"prompt": m[0]["content"], "messages": m} for m in chat],
        ),
        (
            "prometheus-eval/Feedback-Collection",
            {},
            [{"instruction": p["instruction"], "output": p["gpt4_feedback"][0]} for p in prometheus],
        ),
        ("Anthropic/hh-rlhf", {}, [{"chosen": h["chosen"], "rejected": h["rejected"]} for h in hh]),
        ("trl-lib/tldr-preference", {}, [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in pairs]),
        (
            "openai/webgpt_comparisons",
            {},
            [
                {"question": {"full_text": p}, "answer_0": c, "score_0": s, "answer_1": r, "score_1": -s}
                for (p, c, r), s in zip(pairs, [1.0, -0.5, 0.0, 1.0, 0.5, -1.0, 1.0, 0.0], strict=True)
            ],
        ),
        (
            "lvwerra/stack-exchange-paired",
            {"data_dir": "data/reward"},
            [{"question": p, "response_j": c, "response_k": r} for p, c, r in pairs],
        ),
        (
            "stanfordnlp/SHP",
            {},
            [{"history": p, "human_ref_A": c, "human_ref_B": r, "labels": i % 2} for i, (p, c, r) in enumerate(pairs)],
        ),
        (
            "HuggingFaceH4/ultrafeedback_binarized",
            {"split": "train_prefs"},
            [
                {
                    "prompt": p,
                    "chosen": [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                    "rejected": [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                }
                for p, c, r in pairs
            ],
        ),
    ]


def push_stand_in(repo_id: str, push: dict, rows: list[dict]) -> None:
    from huggingface_hub import HfApi

    dataset = datasets.Dataset.from_list(rows)
    split = push.pop("split", "train")
    if "data_dir" in push:
        # A repo without a dataset card, read with `data_dir` as its real counterpart is.
        api = HfApi()
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
        shard = Path(os.environ["HF_DATASETS_CACHE"]) / f"{repo_id.replace('/', '--')}.parquet"
        dataset.to_parquet(str(shard))
        api.upload_file(
            path_or_fileobj=str(shard),
            path_in_repo=f"{push['data_dir']}/{split}-00000-of-00001.parquet",
            repo_id=repo_id,
            repo_type="dataset",
        )
        return
    dataset.push_to_hub(repo_id, split=split, **push)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, data_dir):
    """An offline Hub holding the stand-ins, with this process's HF clients pointed at it (restored afterwards)."""
    from rlrf_hub.hub.server import serve

    server, url = serve(tmp_path_factory.mktemp("hub-root"))
    with hf_clients(tmp_path_factory.mktemp("hf-caches"), url):
        for repo_id, push, rows in stand_ins(data_dir):
            push_stand_in(repo_id, dict(push), rows)
        yield url
    server.shutdown()
    server.server_close()


# Smoke runs on the tiny model ----------------------------------------------------------------------------------------

SCRIPT_SIZES = {
    "model_name_or_path": "embedded:tiny",
    "max_steps": 1,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_length": 256,
    "activation_checkpointing": "false",
    "logging_steps": 1,
}
LOOP_SIZES = {
    **SCRIPT_SIZES,
    "feedback_model": "embedded:tiny",
    "feedback_backend": "in_process",
    "dtype": "float32",
    "load_in_4bit": "false",
    "num_candidates": 2,
    "num_refinements": 1,
    "max_new_tokens": 8,
    "feedback_max_new_tokens": 48,
    "num_general_aspects": 1,
    "max_parse_retries": 0,
    "num_iterations": 1,
}


def small_sources(values: dict, per_source: int = 3) -> None:
    for source in values.get("prompt_sources", []):
        source.update(limit=per_source, offset=0)
    for source in values.get("dataset_mixture", []):
        source["limit"] = per_source


def run_script(name: str, recipe: Path, output_dir: Path, *extra: str):
    parsed = parse(recipe, *flags(**SCRIPT_SIZES, output_dir=output_dir), *extra)
    return script(name).main(*parsed)


def run_loop(recipe: Path, tmp_path: Path, hub_url: str | None, tasks=("general", "math", "bio"), **overrides) -> Path:
    """Run a loop recipe for one iteration at tiny sizes, on 3 prompts of each source whose task is in `tasks`."""
    from rlrf_hub.cli import main

    def edit(values):
        values["prompt_sources"] = [s for s in values["prompt_sources"] if s["task"] in tasks]
        small_sources(values)

    small = edited_copy(recipe, tmp_path / "recipe", edit)
    output_dir = tmp_path / "run"
    publish = {"hub_endpoint": hub_url, "hub_namespace": NAMESPACE} if hub_url else {"hub_endpoint": "none"}
    args = flags(**{**LOOP_SIZES, "output_dir": output_dir, **publish, **overrides})
    assert main(["run", "--config", str(small), *args, *NO_GPU]) == 0
    return output_dir


def hub_rows(repo_id: str, revision: str = "iter-0") -> datasets.Dataset:
    return datasets.load_dataset(repo_id, revision=revision, split="train")


@pytest.fixture(scope="module")
def reward_model(hub, tmp_path_factory):
    """config_reward.yaml's mixture (six Hub datasets, three layouts) trained for one step on the tiny model."""
    folder = tmp_path_factory.mktemp("reward")
    recipe = edited_copy(PAPER / "config_reward.yaml", folder / "recipe", small_sources)
    result = run_script("reward", recipe, folder / "model")
    assert result["steps"] == 1 and result["num_examples"] >= 6 * 2
    return folder / "model"


@pytest.fixture(scope="module")
def paper_run(hub, reward_model, tmp_path_factory):
    """config_m2_dpo_dpo.yaml for one iteration, its stages and adapter published to the offline Hub."""
    recipe = PAPER / "config_m2_dpo_dpo.yaml"
    run_loop(recipe, tmp_path_factory.mktemp("m2-dpo-dpo"), hub, reward_model=reward_model)
    return yaml.safe_load(recipe.read_text())["run_name"]


def test_reward_script_writes_the_loops_reward_model(reward_model):
    """The merged folder scores like the trained adapter on its base, through the loop's own `RewardScorer`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from rlrf_hub.models import resolve_model
    from rlrf_hub.reward import RewardScorer

    scorer = RewardScorer.from_pretrained(str(reward_model), device="cpu")
    prompts, responses = ["What is 2 + 2?", "Name a colour."], ["4", "Blue, like the sky."]
    merged = scorer.score(prompts, responses)
    base = AutoModelForSequenceClassification.from_pretrained(resolve_model("embedded:tiny"), num_labels=1)
    base.config.pad_token_id = scorer.tokenizer.pad_token_id
    adapted = PeftModel.from_pretrained(base, str(reward_model / "adapter")).eval()
    unmerged = RewardScorer(adapted, scorer.tokenizer, "adapter").score(prompts, responses)
    assert torch.allclose(torch.tensor(merged), torch.tensor(unmerged), atol=2e-2), (merged, unmerged)
    assert merged[0] != merged[1]


def test_paper_rlrf_recipe_runs_and_publishes_by_tag(paper_run):
    feedback = hub_rows(f"{NAMESPACE}/{paper_run}-feedback")
    assert {row["task"] for row in feedback} == {"general", "math", "bio"}
    assert all(row["reward"] is not None for row in feedback), "the reward model scored every response"
    assert not any(row["parse_status"] == "verifier" for row in feedback), "the paper's judge rates math itself"
    pairs = hub_rows(f"{NAMESPACE}/{paper_run}-pairs")
    assert len(pairs) >= 1 and set(pairs["pairing"]) == {"rlrf"}
    from huggingface_hub import HfApi

    tags = {ref.name for ref in HfApi().list_repo_refs(f"{NAMESPACE}/{paper_run}-adapter").tags}
    assert "iter-1" in tags


@pytest.fixture(scope="module")
def reward_only_run(hub, reward_model, tmp_path_factory):
    """config_m1_dpo_reward_only.yaml: no judge, no refinements; its pairs feed config_dpo_m1_rs_reward_only.yaml."""
    recipe = PAPER / "config_m1_dpo_reward_only.yaml"
    output_dir = run_loop(recipe, tmp_path_factory.mktemp("reward-only"), hub, reward_model=reward_model)
    return yaml.safe_load(recipe.read_text())["run_name"], output_dir


def test_rs_then_dpo_recipe_runs_its_first_rule(hub, reward_model, tmp_path):
    """config_m2_rs_dpo.yaml's first iteration: rejection sampling, i.e. SFT on positives only. The general prompts
    are left out (the judge's aspect choice is tested with config_m2_dpo_dpo.yaml)."""
    recipe = PAPER / "config_m2_rs_dpo.yaml"
    output_dir = run_loop(recipe, tmp_path, hub, tasks=("math", "bio"), reward_model=reward_model)
    pairs = hub_rows(f"{NAMESPACE}/{yaml.safe_load(recipe.read_text())['run_name']}-pairs")
    assert len(pairs) >= 1 and set(pairs["pairing"]) == {"rs"} and not any(pairs["rejected"])
    metrics = json.loads((output_dir / "adapters" / "M1" / "training_metrics.json").read_text())
    assert metrics["method"] == "rs"


def test_reward_only_recipe_rates_nothing_and_trains_dpo(reward_only_run):
    run_name, output_dir = reward_only_run
    assert {row["parse_status"] for row in hub_rows(f"{NAMESPACE}/{run_name}-feedback")} == {"unrated"}
    pairs = hub_rows(f"{NAMESPACE}/{run_name}-pairs")
    assert len(pairs) >= 1 and set(pairs["pairing"]) == {"reward_only"}
    assert all(c >= r for c, r in zip(pairs["chosen_reward"], pairs["rejected_reward"], strict=True))
    metrics = json.loads((output_dir / "adapters" / "M1" / "training_metrics.json").read_text())
    assert metrics["method"] == "dpo"


def test_reward_only_rs_recipe_trains_on_the_reward_only_pairs(reward_only_run, tmp_path):
    """Table 2's "M1 (RS, reward-only)": the reward-only loop's pairs, trained by SFT on the chosen side."""
    result = run_script("dpo", PAPER / "config_dpo_m1_rs_reward_only.yaml", tmp_path / "out")
    assert result.method == "rs" and result.metrics["steps"] == 1


@pytest.mark.parametrize("name", ["config_dpo_qlora.yaml", "config_dpo_full.yaml"])
def test_paper_dpo_recipes_train_on_the_published_pairs(name, paper_run, tmp_path):
    """Their `dataset_name`/`dataset_revision` are the loop's pairs repo and tag, read as they are."""
    result = run_script("dpo", PAPER / name, tmp_path / "out")
    if name == "config_dpo_qlora.yaml":
        assert result.metrics["steps"] == 1 and (tmp_path / "out" / "adapter_config.json").is_file()
    else:
        assert result["steps"] == 1 and (tmp_path / "out" / "model.safetensors").is_file()
        assert not (tmp_path / "out" / "adapter_config.json").exists()


def test_paper_sft_recipe_mixes_hub_datasets_and_the_runs_own_stages(paper_run, tmp_path):
    """config_sft_qlora.yaml with its distillation run swapped for the smoke run's stages (same layout)."""

    def edit(values):
        small_sources(values)
        for source in values["dataset_mixture"]:
            if source["format"].startswith("rlrf_"):
                source["id"] = f"{NAMESPACE}/{paper_run}"
                source["only_positive"] = False

    recipe = edited_copy(PAPER / "config_sft_qlora.yaml", tmp_path / "recipe", edit)
    result = run_script("sft", recipe, tmp_path / "out")
    assert result["steps"] == 1 and result["num_examples"] >= 3 * 3
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "adapter").is_dir()


def test_cpu_sft_recipe_reads_a_run_folder(paper_run, tmp_path):
    """recipes/smollm2-135m-cpu/sft.yaml: local files, and the rlrf_* sources read a run's `output_dir` layout
    (here the smoke run's stages, downloaded by tag into that layout)."""
    from huggingface_hub import snapshot_download

    run_dir = tmp_path / "run"
    for stage in ("prompts", "candidates", "refinements", "feedback"):
        folder = run_dir / stage if stage == "prompts" else run_dir / "iter-0" / stage
        snapshot_download(f"{NAMESPACE}/{paper_run}-{stage}", repo_type="dataset", revision="iter-0", local_dir=folder)

    def edit(values):
        small_sources(values)
        for source in values["dataset_mixture"]:
            if source["format"].startswith("rlrf_"):
                source.update(path=str(run_dir), only_positive=False)

    recipe = edited_copy(RECIPES / "smollm2-135m-cpu" / "sft.yaml", tmp_path / "recipe", edit)
    result = run_script("sft", recipe, tmp_path / "out")
    assert result["steps"] == 1 and (tmp_path / "out" / "model.safetensors").is_file()


def test_cpu_reward_recipe_trains_on_the_local_hh_rlhf_pairs(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    recipe = edited_copy(RECIPES / "smollm2-135m-cpu" / "reward.yaml", tmp_path / "recipe", small_sources)
    result = run_script("reward", recipe, tmp_path / "out")
    assert result["steps"] == 1 and result["num_examples"] >= 4
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "out").num_labels == 1


def test_mixture_sources_are_checked_before_anything_loads():
    from rlrf_hub.mixtures import MixtureError, as_sources

    good = {"path": "x.jsonl", "format": "prompt_response"}
    cases = [
        ([{**good, "fomat": "messages"}], "dataset_mixture[0]: unknown key"),
        ([{**good, "id": "a/b"}], "exactly one of `id`"),
        ([{**good, "format": "preference"}], "dataset_mixture[0].format"),
        ([{**good, "fields": {"answer": "x"}}], "dataset_mixture[0].fields"),
        ([good, {**good, "fraction": 0.5}], "`fraction` for every source"),
    ]
    for values, message in cases:
        with pytest.raises(MixtureError, match=message.replace("[", r"\[").replace("]", r"\]")):
            as_sources(copy.deepcopy(values), "sft")
    with pytest.raises(MixtureError, match="`label` or both `score_a`"):
        as_sources([{"id": "a/b", "format": "pairwise", "fields": {"score_a": "s"}}], "preference")


def test_cpu_gsm8k_recipe_evaluates_held_out_items_and_reports_paired_differences(tmp_path, monkeypatch, capsys):
    """recipes/smollm2-135m-cpu/rlrf-gsm8k.yaml: RL prompts from GSM8K train, evaluation on the same GSM8K test items
    for M0 and M1 (none of them an RL prompt), per-item outcomes on the card, and a report that pairs M1 with M0.

    The tiny model never states a right number, so a few general prompts, which its judge does rate 1, are added to
    give the smoke run a pair to train on. Its random judge rates a response 1 about a third of the time, so they get
    4 candidates each: with 2, the 9 general responses had no positive on one CPU's rounding ((2/3)^9 = 2.6%); with
    4, the 15 leave that to 0.2%."""
    monkeypatch.chdir(REPO)
    recipe = RECIPES / "smollm2-135m-cpu" / "rlrf-gsm8k.yaml"
    assert {s["task"] for s in yaml.safe_load(recipe.read_text())["prompt_sources"]} == {"math"}
    general = {"path": "../shared/data/prompts/self_instruct_seed_tasks.jsonl", "task": "general"}
    recipe = edited_copy(recipe, tmp_path / "with-general", lambda values: values["prompt_sources"].append(general))
    overrides = {"eval_limit": 4, "eval_max_new_tokens": 8, "num_candidates": 4}
    output_dir = run_loop(recipe, tmp_path, None, tasks=("math", "general"), **overrides)

    from rlrf_hub.lineage import model_cost
    from rlrf_hub.publishing.results import read_folder_results

    reports = read_folder_results(output_dir / "adapters" / "M1")
    gsm8k = {label: next(r for r in reports[label].results if r.task == "gsm8k") for label in ("M0", "M1")}
    assert gsm8k["M0"].item_ids == gsm8k["M1"].item_ids and len(gsm8k["M0"].item_ids) == 4
    assert gsm8k["M0"].dataset_id.endswith("gsm8k/test.jsonl")
    rl_prompts = set(datasets.load_dataset(str(output_dir / "prompts"), split="train")["prompt_id"])
    assert len(rl_prompts) == 6 and not rl_prompts & set(gsm8k["M0"].item_ids)
    items = datasets.load_dataset(str(output_dir / "eval" / "M1" / "gsm8k" / "items"), split="train")
    assert items["item_id"] == gsm8k["M1"].item_ids and [float(c) for c in items["correct"]] == gsm8k["M1"].item_values

    capsys.readouterr()
    assert main_report(output_dir) == 0
    printed = capsys.readouterr().out
    assert "Paired against M0" in printed and "Plumbing check" in printed

    cost = model_cost(str(output_dir / "adapters" / "M1"), None)
    policy_tokens = sum(
        sum(datasets.load_dataset(str(output_dir / "iter-0" / stage), split="train")["num_tokens"])
        for stage in ("candidates", "refinements")
    )
    assert cost["tokens_generated"] >= policy_tokens > 0  # the judge's tokens come on top
    assert cost["data_wall_time_s"] > 0 and cost["train_wall_time_s"] > 0
    markdown = (output_dir / "report" / "report.md").read_text()
    m1_row = next(line for line in markdown.splitlines() if line.startswith("| M1 |"))
    assert f"| {cost['tokens_generated']:,} |" in m1_row


def test_cpu_gsm8k_baseline_samples_and_trains_as_the_science_recipe_does(monkeypatch):
    """The reward-only row is comparable only when the policy, its adapter, the answer length, DPO and the
    evaluation are the same as in the RLRF run; the pairs alone differ."""
    monkeypatch.chdir(REPO)
    science = parse(RECIPES / "smollm2-135m-cpu" / "rlrf-gsm8k.yaml")
    baseline = parse(RECIPES / "smollm2-135m-cpu" / "rlrf-gsm8k-reward-only.yaml")
    model_keys = ("model_name_or_path", "load_in_4bit", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
    for key in model_keys:
        assert getattr(baseline.model, key) == getattr(science.model, key), key
    training_keys = (
        "beta",
        "learning_rate",
        "lr_scheduler_type",
        "num_train_epochs",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "max_length",
        "gradient_checkpointing",
    )
    for key in training_keys:
        assert getattr(baseline.training, key) == getattr(science.training, key), key
    rlrf_keys = ("temperature", "top_p", "max_new_tokens", "eval_tasks", "eval_limit", "eval_gsm8k_data")
    for key in rlrf_keys:
        assert getattr(baseline.rlrf, key) == getattr(science.rlrf, key), key


def test_cpu_gsm8k_reward_only_recipe_trains_on_reward_pairs(reward_model, tmp_path, monkeypatch):
    """recipes/smollm2-135m-cpu/rlrf-gsm8k-reward-only.yaml: no feedback, one reward-ranked pair per prompt, M1
    evaluated on the science recipe's GSM8K test items."""
    monkeypatch.chdir(REPO)
    recipe = RECIPES / "smollm2-135m-cpu" / "rlrf-gsm8k-reward-only.yaml"
    science = parse(RECIPES / "smollm2-135m-cpu" / "rlrf-gsm8k.yaml").rlrf
    baseline = parse(recipe).rlrf
    for key in ("eval_tasks", "eval_limit", "eval_gsm8k_data", "eval_max_new_tokens", "max_new_tokens"):
        assert getattr(baseline, key) == getattr(science, key), key
    output_dir = run_loop(
        recipe, tmp_path, None, tasks=("math",), reward_model=reward_model, eval_limit=2, eval_max_new_tokens=8
    )
    pairs = datasets.load_dataset(str(output_dir / "iter-0" / "pairs"), split="train")
    assert len(pairs) == 3 and set(pairs["pairing"]) == {"reward_only"}
    assert (output_dir / "adapters" / "M1" / "eval" / "M1" / "eval_results.json").is_file()


def main_report(output_dir: Path) -> int:
    from rlrf_hub.cli import main

    return main(["report", str(output_dir)])
