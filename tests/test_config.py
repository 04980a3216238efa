from __future__ import annotations

import pytest
from conftest import REPO, tiny_recipe, write_recipe

from rlrf_hub.cli import main
from rlrf_hub.config import RecipeError, parse_recipe


def _parse(tmp_path, data_dir, *args, **overrides):
    path = write_recipe(tmp_path / "r.yaml", **tiny_recipe(data_dir, tmp_path / "out", **overrides))
    return parse_recipe(["--config", str(path), *args])


def test_recipe_parses_and_command_line_overrides_yaml(tmp_path, data_dir):
    recipe = _parse(
        tmp_path, data_dir, "--output_dir", str(tmp_path / "elsewhere"), "--seed", "3", "--num_candidates", "5"
    )
    assert recipe.training.seed == 3
    assert recipe.output_dir == tmp_path / "elsewhere"
    assert recipe.rlrf.num_candidates == 5
    assert recipe.rlrf.prompt_sources[0].task == "math"
    assert recipe.model.model_name_or_path == "embedded:tiny"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"bogus_key": 1}, "bogus_key"),
        ({"num_candidates": 0}, "num_candidates"),
        ({"top_p": 1.5}, "top_p"),
        ({"pairing": "magic"}, "pairing"),
        ({"reference_model": "m7"}, "reference_model"),
        ({"pairing": "reward_only"}, "reward_model"),
        ({"hub_endpoint": "ftp://hub.example"}, "hub_endpoint"),
        ({"hub_endpoint": "https://hub.example"}, "hub_namespace"),
        ({"checkpoint_push_interval": -1}, "checkpoint_push_interval"),
        ({"hub_namespace": "a/b"}, "hub_namespace"),
        ({"prompt_sources": []}, "prompt_sources"),
        ({"prompt_sources": [{"path": "/nonexistent/file.jsonl", "task": "math"}]}, "prompt_sources[0].path"),
        ({"prompt_sources": [{"path": "x.jsonl", "task": "poetry"}]}, "prompt_sources[0].task"),
        ({"prompt_sources": [{"path": "x.jsonl", "task": "math", "colour": 1}]}, "prompt_sources[0]"),
    ],
)
def test_bad_recipe_values_name_the_field(tmp_path, data_dir, overrides, field):
    with pytest.raises(RecipeError, match=field.replace("[", r"\[").replace("]", r"\]")):
        _parse(tmp_path, data_dir, **overrides)


def test_wrong_type_on_command_line_names_the_field(tmp_path, data_dir):
    with pytest.raises(RecipeError, match="num_candidates"):
        _parse(tmp_path, data_dir, "--num_candidates", "many")


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        parse_recipe(["--config", str(tmp_path / "nope.yaml")])


def _cli_fails_cleanly(tmp_path, capsys, recipe: dict, message: str) -> None:
    path = write_recipe(tmp_path / "bad.yaml", **recipe)
    assert main(["run", "--config", str(path)]) != 0
    err = capsys.readouterr().err
    assert message in err
    assert err.count("error:") == 1
    assert not (tmp_path / "out").exists(), "a rejected recipe must not leave output behind"


def test_cli_rejects_empty_prompt_set_without_writing(tmp_path, data_dir, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    recipe = tiny_recipe(data_dir, tmp_path / "out", prompt_sources=[{"path": str(empty), "task": "general"}])
    _cli_fails_cleanly(tmp_path, capsys, recipe, "prompt_sources")


def test_cli_rejects_prompt_longer_than_context(tmp_path, data_dir, capsys, tiny_model):
    long = tmp_path / "long.jsonl"
    long.write_text('{"prompt": "' + "word " * 600 + '"}\n')
    recipe = tiny_recipe(
        data_dir, tmp_path / "out", prompt_sources=[{"path": str(long), "task": "general"}], max_prompt_tokens=256
    )
    _cli_fails_cleanly(tmp_path, capsys, recipe, "max_prompt_tokens")


def test_cli_rejects_prompt_that_leaves_no_room_in_the_model_context(tmp_path, data_dir, capsys, tiny_model):
    long = tmp_path / "long.jsonl"
    long.write_text('{"prompt": "' + "word " * 300 + '"}\n')
    recipe = tiny_recipe(
        data_dir,
        tmp_path / "out",
        prompt_sources=[{"path": str(long), "task": "general"}],
        max_prompt_tokens=4096,
        max_new_tokens=1900,
    )
    _cli_fails_cleanly(tmp_path, capsys, recipe, "context 148")


def test_cli_rejects_unknown_key(tmp_path, data_dir, capsys):
    _cli_fails_cleanly(tmp_path, capsys, tiny_recipe(data_dir, tmp_path / "out", num_candiates=3), "num_candiates")


LOOP_RECIPES = sorted(
    p for p in (REPO / "recipes" / "smollm2-135m-cpu").glob("*.yaml") if p.stem not in ("dpo", "sft", "reward")
)


def test_help_explains_every_subcommand(capsys):
    for argv in (
        ["--help"],
        ["model", "prepare", "--help"],
        ["summary", "--help"],
        ["hub", "serve", "--help"],
        ["lineage", "--help"],
        ["serve", "--help"],
        ["evaluate", "--help"],
        ["report", "--help"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        assert "usage:" in capsys.readouterr().out
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--num_candidates" in out and "--output_dir" in out and "rlrf-hub run --config" in out


def test_model_prepare_prints_the_folder_last(capsys, tiny_model):
    from transformers import AutoConfig, AutoTokenizer

    assert main(["model", "prepare", "--tiny"]) == 0
    folder = capsys.readouterr().out.strip().splitlines()[-1]
    assert folder == tiny_model
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")
    assert AutoTokenizer.from_pretrained(folder).chat_template


SMOKE_RUN_ELSEWHERE = ("smoke.yaml", "rlrf-gsm8k.yaml", "rlrf-gsm8k-reward-only.yaml")


@pytest.mark.parametrize(
    "recipe",
    [p for p in LOOP_RECIPES if p.name not in SMOKE_RUN_ELSEWHERE],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_shipped_recipes_smoke_run_on_the_tiny_model(recipe, monkeypatch, tmp_path, tiny_model):
    """Each shipped loop recipe runs one iteration with its own prompts and settings on the tiny model.

    `smoke.yaml` is run whole on the real model by tests/test_smoke_recipe.py: its 4 prompts give the random
    tiny judge too few chances to rate a response positive. The GSM8K experiment and its reward-only baseline are
    smoke-run by tests/test_recipes.py, the baseline after training the reward model it names.
    General prompts get one aspect, as in `tiny_recipe` (see why there): with a recipe's three, whether the random
    tiny judge rates any response 1 on all of them depends on the exact candidates, so on the decoder's rounding.
    """
    monkeypatch.chdir(REPO)
    overrides = {
        "model_name_or_path": "embedded:tiny",
        "feedback_model": "embedded:tiny",
        "load_in_4bit": "false",
        "num_candidates": "2",
        "num_refinements": "1",
        "max_new_tokens": "8",
        "feedback_max_new_tokens": "64",
        "num_general_aspects": "1",
        "num_iterations": "1",
        "max_steps": "1",
        "output_dir": str(tmp_path / "out"),
        "hub_store": str(tmp_path / "hub"),
        "eval_limit": "1",
        "eval_max_new_tokens": "8",
    }
    args = [item for key, value in overrides.items() for item in (f"--{key}", value)]
    assert main(["run", "--config", str(recipe), *args]) == 0
    assert (tmp_path / "out" / "adapters" / "M1" / "adapter_config.json").is_file()
