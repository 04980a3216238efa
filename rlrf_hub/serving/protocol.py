"""TGI's request and response shapes (`/work/shared/data/tgi/openapi.json`): parsing with field-level validation,
and the JSON bodies of `/generate`, `/generate_stream` and `/v1/chat/completions`.

Parsing only checks what a request says on its own; limits that depend on the model (prompt length, token budget,
grammar compilation) are checked by the service, which knows the tokenizer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ValidationError

MAX_STOP_SEQUENCES = 4
MAX_TOP_N_TOKENS = 5
API_VERSION = "3.3.6"
DEFAULT_PAYLOAD_LIMIT = 64 * 1024 * 1024  # bytes of a request body; TGI's `--payload-limit` (its default is 2 MB)

_FINISH_TO_OPENAI = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


@dataclass(frozen=True)
class Grammar:
    """A decoding constraint: `kind` is "json" (value: a JSON schema) or "regex" (value: a pattern)."""

    kind: str
    value: Any


@dataclass
class SamplingOptions:
    """How one row is decoded. `do_sample` is resolved (TGI samples as soon as a warper is set)."""

    max_new_tokens: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_n_tokens: int = 0

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


@dataclass
class GenerateInput:
    """A parsed `/generate`, `/generate_stream` or compat `/` request."""

    inputs: str
    options: SamplingOptions
    details: bool = False
    decoder_input_details: bool = False
    return_full_text: bool = False
    best_of: int = 1
    truncate: int | None = None
    adapter_id: str | None = None
    grammar: Grammar | None = None
    stream: bool = False


@dataclass
class ChatInput:
    """A parsed `/v1/chat/completions` request."""

    messages: list[dict[str, str]]
    options: SamplingOptions
    model: str | None = None
    adapter_id: str | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    grammar: Grammar | None = None
    stream: bool = False
    include_usage: bool = False


# Field readers -----------------------------------------------------------------------------------------------------
def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError(f"`{name}` must be a JSON object")
    return value


def _optional(body: dict[str, Any], key: str, kinds: tuple[type, ...], label: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds:
        raise ValidationError(f"`{key}` must be {label}, got {json.dumps(value)}")
    if not isinstance(value, kinds):
        raise ValidationError(f"`{key}` must be {label}, got {json.dumps(value)[:80]}")
    return value


def _float(body: dict[str, Any], key: str) -> float | None:
    value = _optional(body, key, (int, float), "a number")
    if value is not None and not math.isfinite(value):
        raise ValidationError(f"`{key}` must be a finite number")
    return None if value is None else float(value)


def _int(body: dict[str, Any], key: str) -> int | None:
    return _optional(body, key, (int,), "an integer")


def _bool(body: dict[str, Any], key: str, default: bool = False) -> bool:
    value = _optional(body, key, (bool,), "a boolean")
    return default if value is None else value


def _string(body: dict[str, Any], key: str) -> str | None:
    return _optional(body, key, (str,), "a string")


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(item, str) for item in stop):
        raise ValidationError("`stop` must be a list of strings")
    if len(stop) > MAX_STOP_SEQUENCES:
        raise ValidationError(f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(stop)}")
    if any(not item for item in stop):
        raise ValidationError("`stop` sequences must not be empty")
    return tuple(stop)


def _sampling(body: dict[str, Any], max_new_tokens_key: str, chat: bool) -> SamplingOptions:
    temperature = _float(body, "temperature")
    top_p = _float(body, "top_p")
    top_k = _int(body, "top_k")
    typical_p = _float(body, "typical_p")
    repetition_penalty = _float(body, "repetition_penalty")
    frequency_penalty = _float(body, "frequency_penalty")
    presence_penalty = _float(body, "presence_penalty")
    seed = _int(body, "seed")
    max_new_tokens = _int(body, max_new_tokens_key)
    if max_new_tokens is not None and max_new_tokens <= 0:
        raise ValidationError(f"`{max_new_tokens_key}` must be strictly positive")
    if seed is not None and not 0 <= seed < 2**64:
        raise ValidationError("`seed` must be an integer in [0, 2**64)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValidationError("`top_p` must be > 0.0 and <= 1.0")
    if typical_p is not None and not 0.0 < typical_p <= 1.0:
        raise ValidationError("`typical_p` must be > 0.0 and <= 1.0")
    if top_k is not None and top_k <= 0:
        raise ValidationError("`top_k` must be strictly positive")
    if repetition_penalty is not None and repetition_penalty <= 0:
        raise ValidationError("`repetition_penalty` must be strictly positive")
    for key, value in (("frequency_penalty", frequency_penalty), ("presence_penalty", presence_penalty)):
        if value is not None and not -2.0 <= value <= 2.0:
            raise ValidationError(f"`{key}` must be >= -2.0 and <= 2.0")
    if chat:
        # OpenAI semantics: sampling unless temperature is 0, which means greedy.
        if temperature is not None and temperature < 0:
            raise ValidationError("`temperature` must be >= 0")
        do_sample = temperature is None or temperature > 0
        temperature = temperature if temperature and temperature > 0 else 1.0
    else:
        if temperature is not None and temperature <= 0:
            raise ValidationError("`temperature` must be strictly positive")
        temperature = 1.0 if temperature is None else temperature
        warped = temperature != 1.0 or bool(top_k) or (top_p or 1.0) < 1.0 or (typical_p or 1.0) < 1.0
        do_sample = _bool(body, "do_sample") or warped
    return SamplingOptions(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k or 0,
        top_p=top_p if top_p is not None else 1.0,
        typical_p=typical_p if typical_p is not None else 1.0,
        repetition_penalty=repetition_penalty if repetition_penalty is not None else 1.0,
        frequency_penalty=frequency_penalty or 0.0,
        presence_penalty=presence_penalty or 0.0,
        seed=seed,
        stop=_stop(body),
    )


def _schema_value(value: Any, name: str) -> dict[str, Any] | bool:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValidationError(f"`{name}` is not valid JSON: {err}") from None
    if not isinstance(value, (dict, bool)):
        raise ValidationError(f"`{name}` must be a JSON schema (an object)")
    return value


def parse_grammar(value: Any, name: str) -> Grammar | None:
    """TGI's `GrammarType` and OpenAI's `response_format`.

    Accepted: `{"type": "json", "value": schema}` (alias "json_object", whose value is optional: any JSON object),
    `{"type": "regex", "value": pattern}`, `{"type": "json_schema", "value": {"schema": ...}}` (TGI 3) and
    `{"type": "json_schema", "json_schema": {"name": ..., "schema": ...}}` (OpenAI); `{"type": "text"}` is none.
    """
    if value is None:
        return None
    grammar = _object(value, name)
    kind = grammar.get("type")
    if kind == "text":
        return None
    if kind in ("json", "json_object"):
        if grammar.get("value") is None:
            if kind == "json":
                raise ValidationError(f"`{name}.value` is required for type 'json'")
            return Grammar("json", {"type": "object"})
        return Grammar("json", _schema_value(grammar["value"], f"{name}.value"))
    if kind == "regex":
        pattern = grammar.get("value")
        if not isinstance(pattern, str) or not pattern:
            raise ValidationError(f"`{name}.value` must be a non-empty regular expression string")
        return Grammar("regex", pattern)
    if kind == "json_schema":
        key = "json_schema" if "json_schema" in grammar else "value"
        config = _object(grammar.get(key), f"{name}.{key}")
        if "schema" not in config:
            raise ValidationError(f"`{name}.{key}.schema` is required")
        return Grammar("json", _schema_value(config["schema"], f"{name}.{key}.schema"))
    raise ValidationError(
        f"`{name}.type` must be one of 'json', 'json_object', 'json_schema', 'regex', 'text'; got {kind!r}"
    )


def parse_generate(body: Any, stream: bool | None = None) -> GenerateInput:
    """A `GenerateRequest` (`stream` given by the route) or a `CompatGenerateRequest` (`stream` in the body)."""
    body = _object(body, "request body")
    inputs = body.get("inputs")
    if not isinstance(inputs, str):
        raise ValidationError("`inputs` must be a string")
    if not inputs:
        raise ValidationError("`inputs` cannot be empty")
    parameters = _object(body.get("parameters") or {}, "parameters")
    options = _sampling(parameters, "max_new_tokens", chat=False)
    best_of = _int(parameters, "best_of")
    best_of = 1 if best_of is None else best_of
    if best_of < 1:
        raise ValidationError("`best_of` must be strictly positive")
    top_n_tokens = _int(parameters, "top_n_tokens") or 0
    if not 0 <= top_n_tokens <= MAX_TOP_N_TOKENS:
        raise ValidationError(f"`top_n_tokens` must be >= 0 and <= {MAX_TOP_N_TOKENS}")
    options.top_n_tokens = top_n_tokens
    if best_of > 1:
        if not options.do_sample:
            raise ValidationError("you must use sampling when `best_of` is > 1")
        if options.seed is not None:
            raise ValidationError("`seed` must not be set when `best_of` > 1")
    truncate = _int(parameters, "truncate")
    if truncate is not None and truncate <= 0:
        raise ValidationError("`truncate` must be strictly positive")
    if _bool(parameters, "watermark"):
        raise ValidationError("`watermark` is not supported by this server")
    is_stream = _bool(body, "stream") if stream is None else stream
    if is_stream and best_of > 1:
        raise ValidationError("`best_of` != 1 is not supported when streaming tokens")
    return GenerateInput(
        inputs=inputs,
        options=options,
        details=_bool(parameters, "details"),
        decoder_input_details=_bool(parameters, "decoder_input_details"),
        return_full_text=_bool(parameters, "return_full_text"),
        best_of=best_of,
        truncate=truncate,
        adapter_id=_string(parameters, "adapter_id"),
        grammar=parse_grammar(parameters.get("grammar"), "grammar"),
        stream=is_stream,
    )


def _message_text(message: dict[str, Any], index: int) -> str:
    content = message.get("content")
    if content is None:
        if message.get("tool_calls"):
            raise ValidationError(f"`messages[{index}].tool_calls` is not supported by this server")
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for chunk in content:
            if not isinstance(chunk, dict) or chunk.get("type") != "text" or not isinstance(chunk.get("text"), str):
                raise ValidationError(f"`messages[{index}].content` may only hold text chunks")
            parts.append(chunk["text"])
        return "".join(parts)
    raise ValidationError(f"`messages[{index}].content` must be a string or a list of text chunks")


def parse_chat(body: Any) -> ChatInput:
    body = _object(body, "request body")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValidationError("`messages` must be a non-empty list")
    chat = []
    for index, message in enumerate(messages):
        message = _object(message, f"messages[{index}]")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ValidationError(f"`messages[{index}].role` must be a non-empty string")
        chat.append({"role": role, "content": _message_text(message, index)})
    if body.get("tools"):
        raise ValidationError("`tools` are not supported by this server")
    options = _sampling(body, "max_tokens", chat=True)
    if options.max_new_tokens is None and body.get("max_completion_tokens") is not None:
        options.max_new_tokens = _int(body, "max_completion_tokens")
        if options.max_new_tokens <= 0:
            raise ValidationError("`max_completion_tokens` must be strictly positive")
    n = _int(body, "n")
    n = 1 if n is None else n
    if n < 1:
        raise ValidationError("`n` must be strictly positive")
    logprobs = _bool(body, "logprobs")
    top_logprobs = _int(body, "top_logprobs") or 0
    if not 0 <= top_logprobs <= MAX_TOP_N_TOKENS:
        raise ValidationError(f"`top_logprobs` must be >= 0 and <= {MAX_TOP_N_TOKENS}")
    options.top_n_tokens = top_logprobs if logprobs else 0
    stream_options = body.get("stream_options") or {}
    include_usage = _bool(_object(stream_options, "stream_options"), "include_usage")
    return ChatInput(
        messages=chat,
        options=options,
        model=_string(body, "model"),
        adapter_id=_string(body, "adapter_id"),
        n=n,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        grammar=parse_grammar(body.get("response_format"), "response_format"),
        stream=_bool(body, "stream"),
        include_usage=include_usage,
    )


# Responses ---------------------------------------------------------------------------------------------------------
@dataclass
class TokenInfo:
    id: int
    text: str
    logprob: float
    special: bool
    top: list[TokenInfo] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "logprob": self.logprob, "special": self.special}


@dataclass
class SequenceResult:
    """One finished row: what the response bodies are built from."""

    text: str
    tokens: list[TokenInfo]
    finish_reason: str  # "length" | "eos_token" | "stop_sequence"
    seed: int | None
    input_length: int
    prefill: list[dict[str, Any]] = field(default_factory=list)

    @property
    def generated_tokens(self) -> int:
        return len(self.tokens)

    @property
    def logprob_sum(self) -> float:
        return sum(token.logprob for token in self.tokens)


def _details(result: SequenceResult, with_top: bool) -> dict[str, Any]:
    details: dict[str, Any] = {
        "finish_reason": result.finish_reason,
        "generated_tokens": result.generated_tokens,
        "seed": result.seed,
        "prefill": result.prefill,
        "tokens": [token.to_json() for token in result.tokens],
    }
    if with_top:
        details["top_tokens"] = [[top.to_json() for top in token.top] for token in result.tokens]
    return details


def generate_response(request: GenerateInput, results: list[SequenceResult], prefix: str = "") -> dict[str, Any]:
    """`GenerateResponse`; with `best_of` the row with the highest log-probability wins, the others are listed."""
    best = max(range(len(results)), key=lambda i: results[i].logprob_sum)
    response: dict[str, Any] = {"generated_text": prefix + results[best].text}
    if request.details:
        details = _details(results[best], request.options.top_n_tokens > 0)
        if len(results) > 1:
            details["best_of_sequences"] = [
                {"generated_text": prefix + result.text, **_details(result, request.options.top_n_tokens > 0)}
                for i, result in enumerate(results)
                if i != best
            ]
        response["details"] = details
    return response


def stream_token_event(index: int, token: TokenInfo) -> dict[str, Any]:
    return {
        "index": index,
        "token": token.to_json(),
        "top_tokens": [top.to_json() for top in token.top],
        "generated_text": None,
        "details": None,
    }


def stream_final_event(index: int, token: TokenInfo, result: SequenceResult, prefix: str = "") -> dict[str, Any]:
    event = stream_token_event(index, token)
    event["generated_text"] = prefix + result.text
    event["details"] = {
        "finish_reason": result.finish_reason,
        "generated_tokens": result.generated_tokens,
        "input_length": result.input_length,
        "seed": result.seed,
    }
    return event


def openai_finish_reason(finish_reason: str) -> str:
    return _FINISH_TO_OPENAI.get(finish_reason, finish_reason)


def chat_logprobs(tokens: list[TokenInfo]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": token.text,
                "logprob": token.logprob,
                "top_logprobs": [{"token": top.text, "logprob": top.logprob} for top in token.top],
            }
            for token in tokens
        ]
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    request: ChatInput, results: list[SequenceResult], completion_id: str, created: int, model: str
) -> dict[str, Any]:
    choices = []
    for index, result in enumerate(results):
        choice: dict[str, Any] = {
            "index": index,
            "message": {"role": "assistant", "content": result.text},
            "finish_reason": openai_finish_reason(result.finish_reason),
            "logprobs": chat_logprobs(result.tokens) if request.logprobs else None,
        }
        choices.append(choice)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": f"{API_VERSION}-rlrf-hub",
        "choices": choices,
        "usage": usage(results[0].input_length, sum(result.generated_tokens for result in results)),
    }


def chat_chunk(
    completion_id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage_value: dict[str, int] | None = None,
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": f"{API_VERSION}-rlrf-hub",
        "choices": choices,
        "usage": usage_value,
    }


def chat_chunk_choice(
    index: int, content: str, token: TokenInfo | None, finish_reason: str | None, logprobs: bool
) -> dict[str, Any]:
    return {
        "index": index,
        "delta": {"role": "assistant", "content": content},
        "logprobs": chat_logprobs([token]) if logprobs and token is not None else None,
        "finish_reason": openai_finish_reason(finish_reason) if finish_reason else None,
    }
