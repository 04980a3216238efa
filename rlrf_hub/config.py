"""A run's recipe: dataclasses whose fields are exactly the YAML keys.

A recipe is parsed with TRL's `TrlParser` over these dataclasses plus TRL's `ModelConfig` (the policy
and its LoRA/QLoRA settings) and `DPOConfig` (training; it also owns `output_dir`, `seed` and
`run_name`). Unknown keys fail with the key's name; every key is also a command-line flag that
overrides the YAML (`rlrf-hub run --config R --output_dir DIR --seed 3`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RecipeError, read_utf8
from .models import EMBEDDED_MODEL
from .schemas import TASKS
from .stages.settings import PromptSource

if TYPE_CHECKING:
    from .publishing import PublishSettings
    from .stages.settings import RunSettings

PAIRINGS = ("rlrf", "reward_only", "rs")
REFERENCE_MODELS = ("m0", "previous")
ASPECT_MODES = ("paper", "all")
FEEDBACK_BACKENDS = ("in_process", "endpoint", "serve")
WHOLE_NUMBERS = (
    "num_candidates",
    "num_refinements",
    "max_new_tokens",
    "generation_batch_size",
    "feedback_max_new_tokens",
    "feedback_batch_size",
    "num_general_aspects",
    "top_k",
    "num_iterations",
    "max_prompt_tokens",
    "reward_batch_size",
)


@dataclass
class RLRFArguments:
    """Everything of RLRF that is not the policy model or the DPO trainer.

    Parameters that control the prompts:
        prompt_sources: list of `PromptSource` mappings (see that class).
        max_prompt_tokens: the longest prompt (chat template applied) the run accepts.
        long_prompts: `error` (a longer prompt stops the run before any generation) or `drop` (longer prompts are
            left out and counted on the prompts card).

    Parameters that control sampling (paper: n = 10 candidates, m = 20 refinements):
        num_candidates: n, responses sampled per prompt from the current policy.
        num_refinements: m, refinements sampled from the reflection prompt of the selected candidate.
        temperature / top_p / max_new_tokens: sampling settings for candidates and refinements.
        generation_batch_size: sequences generated together in-process.

    Parameters that control feedback:
        feedback_model: model id or path of the judge (frozen); the embedded default if unset.
        feedback_revision: its revision.
        aspect_mode: `paper` (general: the judge picks `num_general_aspects`; math: Logical
            Correctness; bio: Factuality) or `all` (every prompt rated on all eight).
        num_general_aspects: how many aspects the judge picks for a general prompt (paper: 3).
        verifier_tasks: tasks whose feedback comes from a rule-based verifier instead of the judge
            (`math`: the final number is compared with the reference).
        constrained_decoding: constrain the judge to the feedback JSON schema (llguidance).
        feedback_max_new_tokens / feedback_temperature: judge sampling.
        feedback_batch_size: judge requests generated together.
        max_parse_retries: extra judge samples for a reply that does not parse.

    Parameters that control endpoints (`rlrf_hub.backends.endpoint`):
        feedback_backend: `in_process`, `endpoint` (the judge behind `feedback_endpoint`) or `serve` (the run
            starts `rlrf-hub serve` for `feedback_model` on a free port and stops it when done).
        feedback_endpoint: URL, comma list or list of URLs of TGI or OpenAI-compatible servers holding the judge;
            each request goes to the least busy one.
        policy_backend: `in_process`, `endpoint` (the policy behind `policy_endpoint`; iteration t samples from
            the adapter of M_t, which the server must hold under the name the loop passes: TGI's `adapter_id`,
            vLLM's LoRA name) or `serve` (`rlrf-hub serve` for the policy and the adapter of M_t, per iteration).
        policy_endpoint: URL(s) of the policy's servers, as `feedback_endpoint`.
        endpoint_dialect: `auto` (TGI when `GET /info` answers), `tgi` or `openai`.
        endpoint_concurrency: requests in flight per server.
        endpoint_timeout: seconds one request may take.
        endpoint_max_retries: retries of a request on connection errors, timeouts, 429 and 5xx, with exponential
            backoff; when they run out the run stops with a clear error, keeping the rows it has.

    Parameters that control the reward model:
        reward_model: a sequence-classification model id or path; without one, responses are ranked
            by their mean rating (ties: more aspects at 1, then fewer at -1, then sample order).
        reward_revision / reward_batch_size.

    Parameters that control selection and pairing:
        pairing: `rlrf` (positives = rated 1 on every aspect, top-k by reward, each with a random
            negative), `reward_only` (highest-reward candidate vs a random candidate, no feedback),
            or `rs` (positives only, trained by SFT). A comma list gives one rule per iteration.
        top_k: positives kept per prompt.
        pairing_seed: seeds the random choice of negatives.

    Parameters that control the loop:
        num_iterations: M0 -> M1 -> ... ; 2 gives M1 and M2.
        reference_model: DPO reference from iteration 2 on: `m0` (the base) or `previous` (M_t).

    Parameters that control publishing (every stage is a dataset repo `<namespace>/<run_name>-<stage>`, the
    adapters share `<namespace>/<run_name>-adapter`; one commit per iteration tagged `iter-<t>`):
        hub_namespace: user or organisation owning the repos; `local` on the offline Hub when unset.
        hub_endpoint: where to publish. Unset: the Hub at `HF_ENDPOINT` (else huggingface.co) when `hub_namespace`
            is set, the offline Hub otherwise. `offline`: the offline Hub of `rlrf_hub.hub` over `hub_store`,
            reusing a `rlrf-hub hub serve` already running there or starting one for the run. A URL: that Hub.
            `none`: Hub-shaped folders under `output_dir`, no Hub at all. The token comes from `HF_TOKEN`.
        hub_store: the offline Hub's storage folder (default: `$RLRF_HUB_CACHE/hub`, i.e. `~/.cache/rlrf-hub/hub`).
        hub_max_retries: retries of a Hub call on connection errors, timeouts, 429 and 5xx, with exponential backoff
            (1 s, 2 s, ... at most 30 s); when they run out the run stops naming the Hub, and can be resumed.
        checkpoint_push_interval: seconds between pushes of a stage's unfinished work to a `checkpoints/iter-<t>-<key>`
            branch of its repo (`<key>`: the stage's content key, so only a run with the same inputs reads it), so a
            run restarted on another machine continues from it (0: after every chunk).
        shard: `i/N` (0 <= i < N, usually given as `--shard i/N`) makes this process worker i of N sharing the
            generation of each iteration: it samples, rates and refines every N-th chunk and pushes its parts to
            the stage's checkpoint branch; worker 0 merges, publishes and tags each stage and trains. Needs a Hub.
        shard_wait_timeout: seconds a worker waits for the other workers, or for worker 0 to publish a stage.

    Parameters that control evaluation (after each iteration, M0 with M1; results go on the adapter's card):
        eval_tasks: benchmarks among `gsm8k`, `factscore`, `just_eval`; empty: no evaluation.
        eval_limit: at most this many items per benchmark (unset: all).
        eval_judge: judge of FactScore and Just-Eval: a model (`NAME[@REV]`, in process) or an http(s) URL;
            unset: the feedback model, through the feedback stage's backend.
        eval_knowledge_source: FactScore's knowledge source (`{title, text}` rows, or `{title: text}` JSON).
        eval_gsm8k_data / eval_just_eval_data: benchmark data (file, folder or Hub id); unset: the copies under
            `../shared/data` when present, else `openai/gsm8k` and `re-align/just-eval-instruct`.
        eval_judge_template: Just-Eval judge template file or folder (unset: the shipped one).
        eval_max_new_tokens: answer length limit during evaluation (greedy decoding).

    Parameters that control the run itself:
        wait_for_lock: one run at a time may use an `output_dir`; a second one stops at once naming the first
            one's pid, or with `wait_for_lock` (`--wait_for_lock`) waits until it is done.
    """

    prompt_sources: list[PromptSource] = field(default_factory=list)
    max_prompt_tokens: int = 512
    long_prompts: str = "error"

    num_candidates: int = 10
    num_refinements: int = 20
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 256
    generation_batch_size: int = 32

    feedback_model: str = EMBEDDED_MODEL
    feedback_revision: str | None = None
    feedback_backend: str = "in_process"
    aspect_mode: str = "paper"
    num_general_aspects: int = 3
    verifier_tasks: list[str] = field(default_factory=lambda: ["math"])
    constrained_decoding: bool = True
    feedback_max_new_tokens: int = 256
    feedback_temperature: float = 0.7
    feedback_batch_size: int = 16
    max_parse_retries: int = 2

    feedback_endpoint: list[str] = field(default_factory=list)
    policy_backend: str = "in_process"
    policy_endpoint: list[str] = field(default_factory=list)
    endpoint_dialect: str = "auto"
    endpoint_concurrency: int = 8
    endpoint_timeout: float = 120.0
    endpoint_max_retries: int = 5

    reward_model: str | None = None
    reward_revision: str | None = None
    reward_batch_size: int = 8

    pairing: str = "rlrf"
    top_k: int = 2
    pairing_seed: int = 0

    num_iterations: int = 2
    reference_model: str = "m0"

    hub_namespace: str | None = None
    hub_endpoint: str | None = None
    hub_store: str | None = None
    hub_max_retries: int = 5
    checkpoint_push_interval: float = 60.0
    shard: str | None = None
    shard_wait_timeout: float = 21600.0

    eval_tasks: list[str] = field(default_factory=list)
    eval_limit: int | None = None
    eval_judge: str | None = None
    eval_knowledge_source: str | None = None
    eval_gsm8k_data: str | None = None
    eval_just_eval_data: str | None = None
    eval_judge_template: str | None = None
    eval_max_new_tokens: int = 256

    wait_for_lock: bool = False

    def __post_init__(self) -> None:
        self.prompt_sources = [_as_source(s, i) for i, s in enumerate(self.prompt_sources)]
        if isinstance(self.verifier_tasks, str):
            self.verifier_tasks = [t for t in self.verifier_tasks.split(",") if t]
        if isinstance(self.eval_tasks, str):
            self.eval_tasks = [t.strip() for t in self.eval_tasks.split(",") if t.strip()]


def _as_source(value: Any, index: int) -> PromptSource:
    if isinstance(value, PromptSource):
        return value
    where = f"prompt_sources[{index}]"
    if not isinstance(value, dict):
        raise RecipeError(f"{where} must be a mapping with at least `path` and `task`, got {value!r}")
    known = {f.name for f in dataclasses.fields(PromptSource)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    for required in ("path", "task"):
        if required not in value:
            raise RecipeError(f"{where}.{required} is required")
    return PromptSource(**value)


@dataclass
class Recipe:
    """A parsed recipe: the three argument groups of one run."""

    rlrf: RLRFArguments
    model: Any  # trl.ModelConfig
    training: Any  # trl.DPOConfig

    @property
    def output_dir(self) -> Path:
        return Path(self.training.output_dir)

    @property
    def run_name(self) -> str:
        return self.training.run_name or self.output_dir.name


def run_settings(recipe: Recipe) -> RunSettings:
    """The recipe as the plain settings each stage reads."""
    from .backends.factory import EndpointSettings
    from .feedback.judge import FeedbackSettings
    from .sharding import Shard
    from .stages import settings as s

    r, m, t = recipe.rlrf, recipe.model, recipe.training
    return s.RunSettings(
        run_name=recipe.run_name,
        output_dir=recipe.output_dir,
        num_iterations=r.num_iterations,
        policy=s.PolicySettings(
            m.model_name_or_path, m.model_revision, t.seed, r.policy_backend, tuple(r.policy_endpoint)
        ),
        prompts=s.PromptSettings(tuple(r.prompt_sources), r.max_prompt_tokens, r.long_prompts),
        sampling=s.SamplingSettings(
            r.num_candidates, r.num_refinements, r.temperature, r.top_p, r.max_new_tokens, r.generation_batch_size
        ),
        feedback=_pick(FeedbackSettings, r),
        judge=s.JudgeSettings(r.feedback_backend, tuple(r.feedback_endpoint)),
        reward=_pick(s.RewardSettings, r),
        pairing=_pick(s.PairingSettings, r),
        train=s.TrainSettings(m, t, r.reference_model),
        evaluate=s.EvaluateSettings(
            tuple(r.eval_tasks),
            r.eval_limit,
            r.eval_judge,
            r.eval_knowledge_source,
            r.eval_gsm8k_data,
            r.eval_just_eval_data,
            r.eval_judge_template,
            r.eval_max_new_tokens,
        ),
        endpoints=EndpointSettings(
            r.endpoint_dialect, r.endpoint_concurrency, r.endpoint_timeout, r.endpoint_max_retries
        ),
        shard=Shard.parse(r.shard),
        shard_wait_timeout=r.shard_wait_timeout,
    )


def publish_settings(recipe: Recipe) -> PublishSettings:
    from .publishing import PublishSettings

    return _pick(PublishSettings, recipe.rlrf, run_name=recipe.run_name, output_dir=recipe.output_dir)


def _pick(settings_class, args, **values):
    """`settings_class` filled from the attributes of `args` that have its fields' names."""
    names = {f.name for f in dataclasses.fields(settings_class)} - set(values)
    return settings_class(**{name: getattr(args, name) for name in names if hasattr(args, name)}, **values)


def make_parser():
    from trl import DPOConfig, ModelConfig, TrlParser

    return TrlParser((RLRFArguments, ModelConfig, DPOConfig))


def parse_recipe(args: list[str]) -> Recipe:
    """Parse `--config FILE` plus overrides; every problem becomes one `RecipeError` naming the field."""
    if "--config" in args:
        if args.index("--config") + 1 >= len(args):
            raise RecipeError("config: --config needs a recipe file (rlrf-hub run --config RECIPE.yaml)")
        config_path = Path(args[args.index("--config") + 1])
        if not config_path.is_file():
            raise RecipeError(f"config: recipe file {config_path} does not exist")
    parser = make_parser()
    parser.error = _raise_recipe_error
    _reject_unknown_keys(parser, args)
    try:
        rlrf, model, training = parser.parse_args_and_config(args)
    except RecipeError:
        raise
    except (ValueError, TypeError) as err:
        raise RecipeError(_explain(err)) from None
    recipe = Recipe(rlrf, model, training)
    validate(recipe)
    return recipe


def _raise_recipe_error(message: str):
    raise RecipeError(message.replace("argument --", "").replace("/--", " / --"))


def _reject_unknown_keys(parser, args: list[str]) -> None:
    """TRL checks unknown YAML keys only after building the dataclasses; check first for a clear message."""
    if "--config" not in args:
        return
    import yaml

    path = args[args.index("--config") + 1]
    text = read_utf8(Path(path), "config")
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise RecipeError(f"config: {path}{where}: not valid YAML: {problem} (fix the recipe file)") from None
    if not isinstance(config, dict):
        raise RecipeError(f"config: {path} must hold a YAML mapping of recipe keys")
    known = {action.dest for action in parser._actions} | {"env"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise RecipeError(f"unknown recipe key(s) in {path}: {', '.join(unknown)}")


def _explain(err: Exception) -> str:
    text = str(err)
    if text.startswith("Unknown arguments from config file"):
        keys = [item.lstrip("-") for item in text.split("[", 1)[1].split("]", 1)[0].split(", ")[::2]]
        keys = [k.strip("'\"").lstrip("-") for k in keys]
        return f"unknown recipe key(s): {', '.join(keys)}"
    return text


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise RecipeError(f"{field_name}: {message}")


def validate(recipe: Recipe) -> None:
    """Check values the dataclasses cannot: ranges, choices and that local files exist."""
    r = recipe.rlrf
    _validate_prompt_sources(r)
    _validate_sizes(r)
    _require(r.aspect_mode in ASPECT_MODES, "aspect_mode", f"must be one of {ASPECT_MODES}")
    _require(r.feedback_backend in FEEDBACK_BACKENDS, "feedback_backend", f"must be one of {FEEDBACK_BACKENDS}")
    for task in r.verifier_tasks:
        _require(task == "math", "verifier_tasks", f"only `math` has a verifier, got {task!r}")
    _validate_endpoints(r)
    _validate_pairing(r)
    _validate_publishing(r)
    _validate_evaluation(r)
    _require(recipe.training.beta > 0, "beta", "must be > 0")
    _require(recipe.training.learning_rate > 0, "learning_rate", "must be > 0")


def _validate_prompt_sources(r: RLRFArguments) -> None:
    _require(bool(r.prompt_sources), "prompt_sources", "at least one prompt source is required")
    for i, source in enumerate(r.prompt_sources):
        where = f"prompt_sources[{i}]"
        _require(source.task in TASKS, f"{where}.task", f"must be one of {TASKS}, got {source.task!r}")
        _require(
            _looks_like_hub_id(source.path) or Path(source.path).exists(),
            f"{where}.path",
            f"file {source.path} does not exist",
        )
        if source.reference_file:
            _require(
                Path(source.reference_file).is_file(),
                f"{where}.reference_file",
                f"file {source.reference_file} does not exist",
            )
        _require(source.limit is None or source.limit > 0, f"{where}.limit", "must be positive")
        _require(source.offset >= 0, f"{where}.offset", "must be >= 0")
    _require(r.long_prompts in ("error", "drop"), "long_prompts", f"must be `error` or `drop`, got {r.long_prompts!r}")


def _validate_sizes(r: RLRFArguments) -> None:
    """Counts, lengths and sampling values."""
    for name in WHOLE_NUMBERS:
        value = getattr(r, name)
        _require(isinstance(value, int) and value >= 1, name, f"must be a whole number >= 1, got {value!r}")
    _require(r.num_candidates >= 2, "num_candidates", "needs at least 2 candidates to pair")
    _require(r.num_general_aspects <= 8, "num_general_aspects", "there are only 8 aspects")
    _require(r.max_parse_retries >= 0, "max_parse_retries", "must be >= 0")
    _require(r.temperature > 0, "temperature", f"must be > 0, got {r.temperature}")
    _require(0 < r.top_p <= 1, "top_p", f"must be in (0, 1], got {r.top_p}")
    _require(r.feedback_temperature >= 0, "feedback_temperature", "must be >= 0")


def _validate_pairing(r: RLRFArguments) -> None:
    _require(r.reference_model in REFERENCE_MODELS, "reference_model", f"must be one of {REFERENCE_MODELS}")
    for rule in r.pairing.split(","):
        _require(rule.strip() in PAIRINGS, "pairing", f"{rule!r} is not one of {PAIRINGS}")
        _require(
            rule.strip() != "reward_only" or bool(r.reward_model),
            "reward_model",
            "pairing `reward_only` ranks candidates by reward alone and needs a reward model",
        )


def _validate_publishing(r: RLRFArguments) -> None:
    """The Hub, its namespace and retries, checkpoint pushes and sharding (whose workers meet on a Hub)."""
    _require(
        r.hub_endpoint in (None, "offline", "none") or r.hub_endpoint.startswith(("http://", "https://")),
        "hub_endpoint",
        f"must be `offline`, `none` or an http(s) URL, got {r.hub_endpoint!r}",
    )
    _require(
        r.hub_endpoint in (None, "offline", "none") or bool(r.hub_namespace),
        "hub_namespace",
        f"is needed to publish to {r.hub_endpoint}",
    )
    if r.hub_namespace:
        _require(
            "/" not in r.hub_namespace and r.hub_namespace.strip() == r.hub_namespace,
            "hub_namespace",
            f"must be a user or organisation name, got {r.hub_namespace!r}",
        )
    _require(r.hub_max_retries >= 0, "hub_max_retries", "must be >= 0")
    _require(r.checkpoint_push_interval >= 0, "checkpoint_push_interval", "must be >= 0 seconds")
    if r.shard is not None:
        from .sharding import Shard

        try:
            shard = Shard.parse(r.shard)
        except ValueError as error:
            raise RecipeError(f"shard: {error}") from None
        _require(
            not shard.sharded or r.hub_endpoint != "none",
            "shard",
            "the workers of a sharded run meet on a Hub; set hub_endpoint (or leave it unset), not `none`",
        )
    _require(r.shard_wait_timeout > 0, "shard_wait_timeout", "must be > 0 seconds")


def _validate_endpoints(r: RLRFArguments) -> None:
    """Endpoint settings: a backend that needs URLs has them, and every URL and number is usable. URL values
    (one URL, a comma list, or a list) become lists."""
    dialects = ("auto", "tgi", "openai")
    _require(r.policy_backend in FEEDBACK_BACKENDS, "policy_backend", f"must be one of {FEEDBACK_BACKENDS}")
    _require(r.endpoint_dialect in dialects, "endpoint_dialect", f"must be one of {dialects}")
    for backend_key, urls_key in (("feedback_backend", "feedback_endpoint"), ("policy_backend", "policy_endpoint")):
        value = getattr(r, urls_key)
        items = [value] if isinstance(value, str) else list(value or [])
        urls = [url.strip() for item in items for url in str(item).split(",") if url.strip()]
        setattr(r, urls_key, urls)
        if getattr(r, backend_key) == "endpoint":
            _require(bool(urls), urls_key, f"`{backend_key}: endpoint` needs at least one URL")
        for url in urls:
            _require(url.startswith(("http://", "https://")), urls_key, f"{url!r} is not an http(s) URL")
    _require(r.endpoint_concurrency >= 1, "endpoint_concurrency", "must be >= 1")
    _require(r.endpoint_timeout > 0, "endpoint_timeout", "must be > 0 seconds")
    _require(r.endpoint_max_retries >= 0, "endpoint_max_retries", "must be >= 0")


def _validate_evaluation(r: RLRFArguments) -> None:
    from .evaluation.runner import TASKS

    for task in r.eval_tasks:
        _require(task in TASKS, "eval_tasks", f"{task!r} is not one of {TASKS}")
    _require(r.eval_limit is None or r.eval_limit >= 1, "eval_limit", f"must be >= 1, got {r.eval_limit}")
    _require(
        "factscore" not in r.eval_tasks or bool(r.eval_knowledge_source),
        "eval_knowledge_source",
        "FactScore checks facts against a knowledge source: give a file, folder or Hub dataset id",
    )
    _require(r.eval_max_new_tokens >= 1, "eval_max_new_tokens", "must be >= 1")


def _looks_like_hub_id(path: str) -> bool:
    """`owner/name` with no local file of that name: treated as a Hub dataset id."""
    parts = path.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not path.startswith((".", "/"))
        and not Path(path).exists()
        and "." not in parts[-1]
    )
