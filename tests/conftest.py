from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def cache_without_the_default_hub(tmp_path_factory):
    """Tests never publish into this machine's default offline Hub store (`$RLRF_HUB_CACHE/hub`): the cache root
    moves to a temporary folder that links back to the real one's models and wheels, so conversions are shared."""
    from rlrf_hub.models import cache_dir

    real, root = cache_dir(), tmp_path_factory.mktemp("rlrf-hub-cache")
    for name in ("models", "wheels"):
        (real / name).mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(real / name, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RLRF_HUB_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from rlrf_hub.models import prepare_tiny_model

    return str(prepare_tiny_model())


def write_recipe(path: Path, **values) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def tiny_recipe(data: Path, output_dir: Path, **overrides) -> dict:
    """A recipe for the whole loop on the tiny model: real prompts, tiny sizes, published as local folders
    (`hub_endpoint: none`) unless a test asks for a Hub.

    The random tiny judge rates a response 1 on an aspect about a third of the time, so a positive (1 on every
    rated aspect) needs few aspects: with one general aspect every iteration has positives for any sampling path,
    where three left some seeds (and some decoders) with no training pair at all."""
    recipe = {
        "run_name": "tiny",
        "output_dir": str(output_dir),
        "seed": 0,
        "model_name_or_path": "embedded:tiny",
        "load_in_4bit": False,
        "use_peft": True,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_target_modules": ["q_proj", "v_proj"],
        "prompt_sources": [
            {
                "path": str(data / "gsm8k/train.jsonl"),
                "task": "math",
                "prompt_field": "question",
                "reference_field": "answer",
                "limit": 2,
            },
            {"path": str(data / "prompts/self_instruct_seed_tasks.jsonl"), "task": "general", "limit": 2},
            {
                "path": str(data / "factscore/bio_prompts.jsonl"),
                "task": "bio",
                "prompt_template": "Tell me a bio of {topic}.",
                "reference_file": str(data / "factscore/wikipedia/wikipedia_reference_text.json"),
                "entity_field": "topic",
                "require_reference": True,
                "max_reference_chars": 300,
                "limit": 1,
            },
        ],
        "num_candidates": 3,
        "num_refinements": 2,
        "max_new_tokens": 16,
        "generation_batch_size": 8,
        "feedback_model": "embedded:tiny",
        "feedback_max_new_tokens": 96,
        "num_general_aspects": 1,
        "feedback_batch_size": 8,
        "max_parse_retries": 1,
        "top_k": 2,
        "num_iterations": 2,
        "max_steps": 1,
        "per_device_train_batch_size": 2,
        "max_length": 256,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "bf16": False,
        "hub_endpoint": "none",
    }
    recipe.update(overrides)
    return recipe


@contextlib.contextmanager
def hf_clients(caches: Path, url: str | None = None):
    """This process's `huggingface_hub` and `datasets` clients with empty caches under `caches`, pointed at the Hub
    `url` when given (`configure_clients`); everything they change is restored on exit. Yields the MonkeyPatch."""
    import datasets
    from huggingface_hub import constants, hf_api

    from rlrf_hub.hub.server import configure_clients

    hub_cache, datasets_cache = caches / "hub", caches / "datasets"
    datasets_cache.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_HUB_DISABLE_XET", "HF_URL_HOSTS"):
            patch.setattr(constants, name, getattr(constants, name))
        patch.setattr(hf_api.api, "endpoint", hf_api.api.endpoint)
        patch.setattr(datasets.config, "HF_ENDPOINT", datasets.config.HF_ENDPOINT)
        for name in ("HF_ENDPOINT", "HF_HUB_DISABLE_XET"):
            patch.setenv(name, os.environ.get(name, ""))
        patch.setenv("HF_HUB_CACHE", str(hub_cache))
        patch.setenv("HF_DATASETS_CACHE", str(datasets_cache))
        patch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", datasets_cache)
        if url is not None:
            configure_clients(url)
        yield patch


class Crash(RuntimeError):
    """Fault injection: a machine lost in the middle of a stage."""


def crash_generate_on_call(monkeypatch, n: int) -> dict[str, int]:
    """Make the in-process backend's `n`-th `generate` call raise `Crash` (the earlier ones run normally). Returns
    the call counter, which a test may reset."""
    from rlrf_hub.backends.transformers_backend import TransformersBackend

    original, calls = TransformersBackend.generate, {"n": 0}

    def crashing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise Crash(f"lost at generate call {n}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TransformersBackend, "generate", crashing)
    return calls


def half_rounded(model):
    """A copy of `model` with every projection's and the LM head's weights rounded to half precision (the token
    embedding, tied to the head in the original, stays fp32): what the decoder's float16 weights compute."""
    from copy import deepcopy

    import torch

    rounded = deepcopy(model)
    rounded.lm_head.weight = torch.nn.Parameter(rounded.lm_head.weight.detach().clone())
    with torch.no_grad():
        for module in rounded.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(module.weight.half().float())
    return rounded
