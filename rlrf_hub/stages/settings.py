"""The settings each stage reads: plain values that `rlrf_hub.config.run_settings` takes from the recipe.

Field names follow the recipe keys they come from, so a setting is found by the key a user writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends.factory import EndpointSettings
from ..feedback.judge import FeedbackSettings
from ..sharding import Shard


@dataclass
class PromptSource:
    """One source of RL prompts.

    Parameters:
        path: a `.jsonl`/`.json` file, a folder of them, or a Hub dataset id.
        task: `general`, `math` or `bio`; decides which aspects are rated and with what reference.
        prompt_field: column holding the prompt text.
        reference_field: column holding the reference (math solution); `None` for none.
        reference_file: for bio prompts, a JSON file `{title: text | {"extract": text}}` looked up by `entity_field`.
        entity_field: column naming the entity whose reference text is looked up in `reference_file`.
        prompt_template: build the prompt from row fields instead, e.g. `"Tell me a bio of {topic}."`.
        require_reference: keep only rows that have a reference.
        max_reference_chars: references are cut to this many characters (context budget).
        name / split: dataset config and split when `path` is a Hub dataset id.
        limit / offset: take rows `offset .. offset + limit` of the source (after `require_reference`).
    """

    path: str
    task: str
    prompt_field: str = "prompt"
    reference_field: str | None = None
    reference_file: str | None = None
    entity_field: str | None = None
    prompt_template: str | None = None
    require_reference: bool = False
    max_reference_chars: int = 3000
    name: str | None = None
    split: str = "train"
    limit: int | None = None
    offset: int = 0


@dataclass(frozen=True)
class PolicySettings:
    """The policy M0 and how it is served (`policy_backend`: in_process, endpoint or serve)."""

    model: str
    revision: str | None
    seed: int
    backend: str = "in_process"
    endpoint: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptSettings:
    sources: tuple[PromptSource, ...]
    max_prompt_tokens: int
    long_prompts: str


@dataclass(frozen=True)
class SamplingSettings:
    num_candidates: int
    num_refinements: int
    temperature: float
    top_p: float
    max_new_tokens: int
    generation_batch_size: int


@dataclass(frozen=True)
class JudgeSettings:
    """How the feedback model is served: `feedback_backend` and its `feedback_endpoint` URLs."""

    backend: str = "in_process"
    endpoint: tuple[str, ...] = ()


@dataclass(frozen=True)
class RewardSettings:
    reward_model: str | None = None
    reward_revision: str | None = None
    reward_batch_size: int = 8


@dataclass(frozen=True)
class PairingSettings:
    pairing: str
    top_k: int
    pairing_seed: int

    def rule_for(self, iteration: int) -> str:
        rules = [r.strip() for r in self.pairing.split(",")]
        return rules[min(iteration, len(rules) - 1)]


@dataclass(frozen=True)
class TrainSettings:
    """TRL's `ModelConfig` (base and LoRA) and `DPOConfig` of the recipe, and which model is the DPO reference."""

    model_args: Any
    training_args: Any
    reference_model: str = "m0"


@dataclass(frozen=True)
class EvaluateSettings:
    tasks: tuple[str, ...] = ()
    limit: int | None = None
    judge: str | None = None
    knowledge_source: str | None = None
    gsm8k_data: str | None = None
    just_eval_data: str | None = None
    judge_template: str | None = None
    max_new_tokens: int = 256


@dataclass(frozen=True)
class RunSettings:
    """Everything a run's stages read, grouped by stage."""

    run_name: str
    output_dir: Path
    num_iterations: int
    policy: PolicySettings
    prompts: PromptSettings
    sampling: SamplingSettings
    feedback: FeedbackSettings
    judge: JudgeSettings
    reward: RewardSettings
    pairing: PairingSettings
    train: TrainSettings
    evaluate: EvaluateSettings
    endpoints: EndpointSettings = field(default_factory=EndpointSettings)
    shard: Shard = field(default_factory=Shard)
    shard_wait_timeout: float = 21600.0
