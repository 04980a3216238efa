"""What each published artifact depends on, hashed into a content key that its card carries.

A run started again, on this machine or on a fresh one with empty caches, computes each stage's key from the
recipe and the commits of the stage's parents, and reuses what is published under the stage's tag only when the
keys agree. Settings that change how the work is done but not what it is (batch sizes, backends, endpoints,
folders) are left out, so moving the judge behind an endpoint does not invalidate a run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

from .aspects import rubric_sha256
from .feedback.templates import TEMPLATES_SHA256

if TYPE_CHECKING:
    from .config import Recipe

SAMPLING = ("temperature", "top_p", "max_new_tokens")
FEEDBACK = (
    "feedback_model",
    "feedback_revision",
    "aspect_mode",
    "num_general_aspects",
    "verifier_tasks",
    "constrained_decoding",
    "feedback_max_new_tokens",
    "feedback_temperature",
    "max_parse_retries",
    "reward_model",
    "reward_revision",
)
TRAINING = (
    "beta",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "loss_type",
)
LORA = ("load_in_4bit", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")


def _pick(obj, names: Sequence[str]) -> dict:
    return {name: getattr(obj, name, None) for name in names}


def stage_settings(recipe: Recipe, stage: str, iteration: int) -> dict:
    """The recipe values a stage's output depends on."""
    r, m, t = recipe.rlrf, recipe.model, recipe.training
    if stage == "prompts":
        return {
            "prompt_sources": [asdict(source) for source in r.prompt_sources],
            "max_prompt_tokens": r.max_prompt_tokens,
            "long_prompts": r.long_prompts,
        }
    policy = {"model": m.model_name_or_path, "revision": m.model_revision, "seed": t.seed, "iteration": iteration}
    rule = r.pairing_for(iteration)
    if stage == "candidates":
        return {**policy, "num_candidates": r.num_candidates, **_pick(r, SAMPLING)}
    feedback = {"rule": rule, "rubric": rubric_sha256(), "templates": TEMPLATES_SHA256, **_pick(r, FEEDBACK)}
    refinement = {"num_refinements": r.num_refinements, **_pick(r, SAMPLING)}
    if stage in ("refinements", "feedback"):
        return {**policy, **feedback, **refinement}
    if stage == "pairs":
        return {"iteration": iteration, "rule": rule, "top_k": r.top_k, "pairing_seed": r.pairing_seed}
    if stage == "adapter":
        return {
            **policy,
            "rule": rule,
            "reference_model": r.reference_model,
            **_pick(t, TRAINING),
            **_pick(m, LORA),
        }
    raise ValueError(f"no settings for stage {stage!r}")


def content_key(stage: str, settings: dict, parents: Sequence[str | None]) -> str:
    """sha256 over the stage, its settings and its parents' revisions (commit shas on a Hub)."""
    payload = {"stage": stage, "settings": settings, "parents": list(parents)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
