"""Asking a judge for JSON replies, reading them strictly then tolerantly, and naming the judge.

Every benchmark judge here is asked with a JSON schema (every property required, choices as enums), so a
constrained backend answers in the contract and `strict` parsing succeeds. Replies of unconstrained
judges get a second, tolerant reading; what still cannot be read is asked once more with sampling, then
counted as `failed`, never guessed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..backends.base import GenerationBackend, GenerationRequest, SamplingParams
from ..feedback.parsing import json_values as values_in_order

JUDGE_PARAMS = SamplingParams(max_new_tokens=512, temperature=0.0, top_p=1.0, do_sample=False, seed=0)
# A greedy judge repeats itself when asked again; a retry samples instead.
RETRY_TEMPERATURE = 0.7
_URL_ATTRIBUTES = ("base_url", "endpoint_url", "url", "endpoint")


def split_revision(spec: str) -> tuple[str, str | None]:
    """`name@rev` -> (name, rev); an existing path is never split."""
    if Path(spec).exists() or "@" not in spec:
        return spec, None
    name, _, revision = spec.partition("@")
    if not name or not revision:
        raise ValueError(f"expected NAME@REVISION, got {spec!r}")
    return name, revision


def judge_from_spec(
    spec: str, batch_size: int, endpoint: Callable[[str], GenerationBackend] | None = None
) -> GenerationBackend:
    """The judge a command line or a recipe names: an http(s) URL (through `endpoint`, a plain `EndpointBackend`
    by default), else `MODEL[@REV]` loaded in this process."""
    if re.match(r"https?://", spec):
        if endpoint is not None:
            return endpoint(spec)
        from ..backends.endpoint import EndpointBackend

        return EndpointBackend(spec)
    from ..backends.transformers_backend import TransformersBackend

    model, revision = split_revision(spec)
    return TransformersBackend.from_pretrained(model, revision=revision, batch_size=batch_size)


@dataclass
class JudgeReply:
    value: Any
    text: str
    status: str  # "strict", "tolerant" or "failed"
    attempts: int


# A parser returns the value read from a reply and "strict" or "tolerant", or None when it cannot read it.
Parser = Callable[[str], "tuple[Any, str] | None"]


def judge_identity(backend: GenerationBackend) -> str:
    """Who judged: model id and revision (when known), and the endpoint URL(s) for a judge behind HTTP."""
    model = getattr(backend, "model_id", None) or "unknown"
    revision = getattr(backend, "revision", None)
    name = f"{model}@{revision}" if revision else str(model)
    urls = getattr(backend, "urls", None)
    if isinstance(urls, str):
        urls = [urls]
    if not urls:
        url = next((getattr(backend, attr) for attr in _URL_ATTRIBUTES if getattr(backend, attr, None)), None)
        urls = [url] if url else []
    urls = [str(url) for url in urls]
    if not urls:
        return name
    where = ", ".join(urls)
    return where if str(model) in ("unknown", *urls) else f"{name} via {where}"


def ask_judge(
    judge: GenerationBackend,
    requests: Sequence[GenerationRequest],
    parse: Parser,
    params: SamplingParams = JUDGE_PARAMS,
    retries: int = 1,
    desc: str | None = None,
) -> list[JudgeReply]:
    """One reply per request; unreadable ones are asked again (only those) up to `retries` times."""
    replies: list[JudgeReply | None] = [None] * len(requests)
    pending = list(range(len(requests)))
    for attempt in range(retries + 1):
        if not pending:
            break
        attempt_params = params if attempt == 0 else replace(params, do_sample=True, temperature=RETRY_TEMPERATURE)
        attempt_params = replace(attempt_params, seed=params.seed + attempt)
        outputs = judge.generate([requests[i] for i in pending], attempt_params, desc=desc)
        still = []
        for index, generations in zip(pending, outputs, strict=True):
            text = generations[0].text
            parsed = parse(text)
            if parsed is None:
                replies[index] = JudgeReply(None, text, "failed", attempt + 1)
                still.append(index)
            else:
                replies[index] = JudgeReply(parsed[0], text, parsed[1], attempt + 1)
        pending = still
    return replies  # type: ignore[return-value]


def strict_json(text: str) -> Any:
    """The reply as JSON when it is exactly one JSON value (surrounding whitespace allowed), else `None`."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def json_values(text: str) -> Iterator[Any]:
    """Every balanced `{...}` or `[...]` span of a reply that reads as JSON or a Python literal, last first.

    Code fences, prose around the JSON and trailing commas are tolerated; the last span comes first
    because judges that think aloud put their verdict at the end.
    """
    yield from reversed(list(values_in_order(text)))
