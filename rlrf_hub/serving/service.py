"""The text-generation service behind the HTTP routes: loads the model, validates requests against it, turns them
into scheduler jobs, and describes itself (`/info`, `/v1/models`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import __version__ as package_version
from ..backends.projections import WEIGHT_PRECISIONS, WeightPrecision, default_precision, use_half_weights
from .adapters import AdapterRegistry, parse_adapter_spec, startup_adapter
from .constraints import compile_grammar, make_constraint
from .engine import Engine
from .engine import Sequence as Row
from .errors import ServingError, ValidationError
from .metrics import ServerMetrics
from .protocol import (
    API_VERSION,
    DEFAULT_PAYLOAD_LIMIT,
    MAX_STOP_SEQUENCES,
    MAX_TOP_N_TOKENS,
    ChatInput,
    GenerateInput,
    SamplingOptions,
    parse_chat,
    parse_generate,
)
from .scheduler import Job, Scheduler, SchedulerConfig

DEFAULT_MAX_TOTAL_TOKENS = 4096


@dataclass
class ServeConfig:
    """Everything `rlrf-hub serve` is started with.

    `adapters` are the only local folders adapters may be loaded from (requests may add Hub adapters);
    `payload_limit` is the largest request body in bytes (TGI's `--payload-limit`), larger ones get 413.
    `weight_precision` is how the CPU multiplies by the model's linear weights: "float16" keeps half-precision
    copies with fp32 arithmetic (`backends.projections.HalfWeightLinear`), "float32" the model's own; None takes
    "float16" on CPUs with fbgemm and "float32" elsewhere.
    """

    model: str
    revision: str | None = None
    adapters: tuple[str, ...] = ()
    max_batch_size: int = 16
    max_input_tokens: int | None = None
    max_total_tokens: int | None = None
    max_queue: int = 128
    batch_window_ms: float = 5.0
    threads: int | None = None
    device: str | None = None
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT
    weight_precision: WeightPrecision | None = None

    def __post_init__(self):
        self.adapters = tuple(self.adapters)
        if self.weight_precision not in (None, *WEIGHT_PRECISIONS):
            raise ValueError(f"weight_precision must be one of {WEIGHT_PRECISIONS}, got {self.weight_precision!r}")
        if self.payload_limit < 1:
            raise ValueError(f"payload_limit must be positive, got {self.payload_limit}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be positive, got {self.max_batch_size}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if self.batch_window_ms < 0:
            raise ValueError(f"batch_window_ms must be >= 0, got {self.batch_window_ms}")


@dataclass
class PreparedJob:
    request: GenerateInput | ChatInput
    job: Job
    input_length: int
    model_name: str


def resolve_weight_precision(config: ServeConfig, device: str) -> WeightPrecision:
    if config.weight_precision is None:
        return default_precision() if device == "cpu" else "float32"
    if config.weight_precision == "float16" and device != "cpu":
        raise ValueError(f"weight_precision 'float16' is for CPU serving; the model is on {device}")
    return config.weight_precision


def _token_limits(config: ServeConfig, model) -> tuple[int, int]:
    positions = getattr(model.config, "max_position_embeddings", None) or DEFAULT_MAX_TOTAL_TOKENS
    max_total = config.max_total_tokens or min(positions, DEFAULT_MAX_TOTAL_TOKENS)
    max_input = config.max_input_tokens or max_total - 1
    if max_input >= max_total:
        raise ValueError(f"max_input_tokens ({max_input}) must be < max_total_tokens ({max_total})")
    return max_input, max_total


class TextGenerationService:
    def __init__(self, config: ServeConfig):
        import torch

        from ..models import load_causal_lm, load_tokenizer

        self.config = config
        self.model_id = config.model
        self._base_names = {"tgi", config.model}
        model = load_causal_lm(config.model, revision=config.revision)
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
        self.weight_precision = resolve_weight_precision(config, torch.device(device).type)
        if self.weight_precision == "float16":
            use_half_weights(model)
        self.tokenizer = load_tokenizer(config.model, revision=config.revision)
        self.max_input_tokens, self.max_total_tokens = _token_limits(config, model)
        self.engine = Engine(model, self.tokenizer)
        self.adapters = AdapterRegistry()
        for index, text in enumerate(config.adapters):
            spec = parse_adapter_spec(text)
            self.engine.attach_adapter(str(startup_adapter(spec)), f"preloaded_{index}")
            self.adapters.mark_loaded(spec.name, f"preloaded_{index}", spec.location)
        self.metrics = ServerMetrics()
        self.scheduler = Scheduler(
            self.engine,
            self.adapters,
            self.metrics,
            SchedulerConfig(
                max_batch_size=config.max_batch_size,
                max_queue=config.max_queue,
                batch_window_s=config.batch_window_ms / 1000,
                torch_threads=config.threads,
            ),
        )
        self._tokenizer_lock = threading.Lock()
        self.created = int(time.time())
        self.scheduler.start()

    def close(self) -> None:
        self.scheduler.stop()

    # Description -------------------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "model_sha": self.config.revision,
            "model_pipeline_tag": "text-generation",
            "model_dtype": str(self.engine.model.dtype).removeprefix("torch."),
            "model_device_type": self.engine.device.type,
            "weight_precision": self.weight_precision,
            "max_concurrent_requests": self.config.max_queue + self.config.max_batch_size,
            "max_best_of": self.config.max_batch_size,
            "max_stop_sequences": MAX_STOP_SEQUENCES,
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "max_batch_size": self.config.max_batch_size,
            "max_top_n_tokens": MAX_TOP_N_TOKENS,
            "validation_workers": 1,
            "max_client_batch_size": 1,
            "router": "text-generation-router",
            "version": API_VERSION,
            "sha": None,
            "docker_label": None,
            "server": f"rlrf-hub {package_version}",
            "adapters": self.adapters.names,
        }

    def models(self) -> dict[str, Any]:
        names = [self.model_id, *self.adapters.names]
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": self.created, "owned_by": "rlrf-hub"} for name in names
            ],
        }

    # Jobs --------------------------------------------------------------------------------------------------------
    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        with self._tokenizer_lock:
            return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def _check_lengths(self, input_length: int, options: SamplingOptions) -> int:
        if input_length == 0:
            raise ValidationError("`inputs` cannot be empty")
        if input_length > self.max_input_tokens:
            raise ValidationError(
                f"`inputs` must have less than {self.max_input_tokens + 1} tokens. Given: {input_length}"
            )
        max_new_tokens = options.max_new_tokens or self.max_total_tokens - input_length
        if input_length + max_new_tokens > self.max_total_tokens:
            raise ValidationError(
                f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
            )
        return max_new_tokens

    def _rows(
        self,
        prompt_ids: list[int],
        options: SamplingOptions,
        count: int,
        grammar_text: str | None,
        decoder_input_details: bool = False,
    ) -> list[Row]:
        if count > self.config.max_batch_size:
            raise ValidationError(f"at most {self.config.max_batch_size} sequences per request (`best_of`, `n`)")
        max_new_tokens = self._check_lengths(len(prompt_ids), options)
        rows = []
        for index in range(count):
            constraint = None
            if grammar_text is not None:
                constraint = make_constraint(self.tokenizer, self.engine.eos_token_ids, grammar_text)
            seed = None if options.seed is None else (options.seed + index) % 2**64
            rows.append(
                Row(
                    sink=None,  # type: ignore[arg-type]  # set by Job
                    index=index,
                    prompt_ids=prompt_ids,
                    options=options,
                    max_new_tokens=max_new_tokens,
                    constraint=constraint,
                    decoder_input_details=decoder_input_details,
                    seed=seed,
                )
            )
        return rows

    def _adapter(self, adapter_id: str | None) -> str | None:
        return self.adapters.resolve(adapter_id) if adapter_id else None

    def _counted(self, build):
        self.metrics.request_count.inc()
        try:
            prepared = build()
            self.scheduler.submit(prepared.job)
        except ServingError as err:
            self.record_failure(err)
            raise
        return prepared

    def record_failure(self, error: ServingError) -> None:
        self.metrics.request_failure.inc(err=error.error_type)

    def record_success(self) -> None:
        self.metrics.request_success.inc()

    def submit_generate(self, body: Any, stream: bool | None) -> PreparedJob:
        """Parse and validate a `/generate` request (`stream=None`: the compat route, whose body says) and queue it.

        Raises `ServingError` (validation, overloaded)."""

        def build() -> PreparedJob:
            request = parse_generate(body, stream)
            adapter = self._adapter(request.adapter_id)
            grammar_text = compile_grammar(request.grammar) if request.grammar is not None else None
            prompt_ids = self._encode(request.inputs, add_special_tokens=True)
            if request.truncate is not None:
                prompt_ids = prompt_ids[-request.truncate :]
            rows = self._rows(
                prompt_ids, request.options, request.best_of, grammar_text, request.decoder_input_details
            )
            self.metrics.request_input_length.observe(len(prompt_ids))
            return PreparedJob(request, Job(rows, adapter, self.metrics), len(prompt_ids), adapter or self.model_id)

        return self._counted(build)

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        try:
            return self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        except Exception as err:  # template errors (e.g. roles out of order) are the request's fault
            raise ValidationError(f"`messages` cannot be rendered with the chat template: {err}") from None

    def submit_chat(self, body: Any) -> PreparedJob:
        """Parse and validate a `/v1/chat/completions` request and queue it (raises `ServingError`)."""

        def build() -> PreparedJob:
            request = parse_chat(body)
            if request.adapter_id:
                adapter = self._adapter(request.adapter_id)
            elif request.model and request.model not in self._base_names:
                adapter = self.adapters.try_resolve(request.model)
            else:
                adapter = None
            grammar_text = compile_grammar(request.grammar) if request.grammar is not None else None
            prompt_ids = self._encode(self.chat_prompt(request.messages), add_special_tokens=False)
            rows = self._rows(prompt_ids, request.options, request.n, grammar_text)
            self.metrics.request_input_length.observe(len(prompt_ids))
            return PreparedJob(request, Job(rows, adapter, self.metrics), len(prompt_ids), adapter or self.model_id)

        return self._counted(build)
