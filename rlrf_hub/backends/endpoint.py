"""Generation over HTTP: the `GenerationBackend` protocol on TGI and OpenAI-compatible endpoints.

`generate` is synchronous, like every backend's; inside, one event loop sends each sample as its own request,
at most `concurrency` at a time per server, each to the server with the fewest requests in flight (servers that
failed last come after the healthy ones). Every sample has its own seed, derived from `params.seed`, the
request's index and the sample's index: servers may cache identical requests, and `n` copies of one request
must still differ.

Failures. Connection errors, timeouts, 408/424/429 and 5xx are retried with exponential backoff and jitter
(`retry.RetryPolicy`), on any server. When a sample has used all its retries on such errors the endpoint is
taken as down for good: `EndpointUnavailableError` is raised (naming the URL, never a token), the call's other
requests are cancelled, and nothing of this call is returned; what the stage checkpointed before stays. A 4xx
that says the request itself is wrong is not retried: the sample comes back empty with `finish_reason="error"`
(the judge then parses nothing and asks again; a policy sample stays empty), counted in `stats["failures"]`.

Replies to requests with a `json_schema` are validated against it (`jsonschema`). Invalid replies are returned
all the same, since the feedback parser has its own tolerant reading and retries, and counted in
`stats["schema_invalid"]`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import random
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from .base import Generation, GenerationRequest, SamplingParams
from .dialects import AUTO, Caller, ServerInfo, detect, schema_key
from .retry import CLIENT_ERROR, Failure, RetryPolicy, classify

ERROR_FINISH_REASON = "error"


class EndpointUnavailableError(RuntimeError):
    """An endpoint kept failing after every retry; the message names the URL and the last failure."""

    def __init__(self, url: str, failure: Failure, attempts: int):
        self.url = url
        self.reason = failure.reason
        self.attempts = attempts
        super().__init__(
            f"endpoint {url}: {attempts} attempt(s) failed, the last with {failure.reason}: {failure.message} (rows "
            "finished before this are kept: run the same command again once the endpoint is up)"
        )


def sample_seed(seed: int, request_index: int, sample_index: int) -> int:
    """A 31-bit seed per (call seed, request, sample): distinct samples never share a seed by construction of
    the key, and 31 bits fit every server (llama.cpp keeps 32-bit seeds)."""
    key = f"{seed}\x00{request_index}\x00{sample_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") & (2**31 - 1)


@dataclass
class EndpointStats:
    """What the backend did, over all `generate` calls; `as_dict()` goes on the feedback dataset's card.

    `requests` counts HTTP requests sent (retries included), `samples` the generations returned; `retries` and
    `failures` (samples that ended without a reply) are keyed by reason: connection, timeout, rate_limited,
    server_error, bad_response, client_error.
    """

    requests: int = 0
    samples: int = 0
    retries: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    schema_checked: int = 0
    schema_invalid: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    response_format_fallbacks: int = 0
    requests_by_url: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "samples": self.samples,
            "retries": dict(self.retries),
            "failures": dict(self.failures),
            "schema_checked": self.schema_checked,
            "schema_invalid": self.schema_invalid,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "response_format_fallbacks": self.response_format_fallbacks,
            "requests_by_url": dict(self.requests_by_url),
        }


@dataclass
class _Server:
    info: ServerInfo
    in_flight: int = 0
    failing: int = 0  # consecutive failed attempts
    sent: int = 0


class EndpointBackend:
    """Completes chat requests on one or more HTTP endpoints (the `GenerationBackend` protocol).

    Args:
        urls: base URL(s) of the server(s), e.g. `http://127.0.0.1:8080` (a trailing `/v1` is dropped).
        model_id / revision: recorded for lineage; default: what the first server reports.
        adapter: a LoRA adapter the server holds, to sample from instead of the base model: TGI's adapter id,
            or the name under which an OpenAI-compatible server (vLLM) serves it.
        dialect: `auto` (TGI when `GET /info` answers), `tgi` or `openai`; see `rlrf_hub.backends.dialects`.
        concurrency: requests in flight per server.
        timeout: seconds one request may take, connection included.
        retry: when and how often to retry (`RetryPolicy()` by default).
        token: bearer token for the servers; default: huggingface_hub's (`HF_TOKEN`). Never logged.
        validate_schema: check JSON-constrained replies against their schema and count the invalid ones.
        server: an object with `close()` (a server this backend started); closed with the backend.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        model_id: str | None = None,
        revision: str | None = None,
        adapter: str | None = None,
        dialect: str = AUTO,
        concurrency: int = 8,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        token: str | None = None,
        validate_schema: bool = True,
        server: Any = None,
    ):
        urls = [urls] if isinstance(urls, str) else list(urls)
        if not urls:
            raise ValueError("EndpointBackend needs at least one URL")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.retry = retry or RetryPolicy()
        self.concurrency = concurrency
        self.timeout = timeout
        self._token = token
        self.validate_schema = validate_schema
        self._stats = EndpointStats()
        self._validators: dict[str, Any] = {}
        self._rng = random.Random(0)
        self._finalizer = weakref.finalize(self, server.close) if server is not None else None
        self._servers = [_Server(self._detect(url, dialect, timeout)) for url in urls]
        first = self._servers[0].info
        self.model_id = model_id or first.model_id or first.url
        self.revision = revision if revision is not None or model_id is not None else first.revision
        self.adapter = adapter

    def _detect(self, url: str, dialect: str, timeout: float) -> ServerInfo:
        try:
            return detect(url, dialect, self.retry, min(timeout, 30.0), self._token)
        except Exception as error:
            failure = classify(error)
            if failure.reason == CLIENT_ERROR:
                raise
            raise EndpointUnavailableError(url.rstrip("/"), failure, self.retry.max_retries + 1) from None

    @property
    def urls(self) -> list[str]:
        return [s.info.url for s in self._servers]

    @property
    def dialects(self) -> dict[str, str]:
        return {s.info.url: s.info.dialect for s in self._servers}

    @property
    def total_tokens(self) -> int:
        """Generated tokens so far, as the servers counted them (the in-process backend has the same attribute)."""
        return self._stats.completion_tokens

    @property
    def stats(self) -> dict[str, Any]:
        return {"dialects": self.dialects, **self._stats.as_dict()}

    def counters(self, prefix: str = "endpoint_") -> dict[str, int]:
        """`stats` as flat numbers (`endpoint_requests`, `endpoint_retries_timeout`, ...), which add up across
        workers like the judge's own statistics."""
        flat = {}
        for key, value in self._stats.as_dict().items():
            if isinstance(value, int):
                flat[f"{prefix}{key}"] = value
            elif key in ("retries", "failures"):
                flat.update({f"{prefix}{key}_{reason}": count for reason, count in value.items()})
        return flat

    def close(self) -> None:
        """Stop the server this backend started, if any (also done when the backend is garbage collected)."""
        if self._finalizer is not None:
            self._finalizer()

    def __repr__(self) -> str:
        return f"EndpointBackend(urls={self.urls}, model_id={self.model_id!r}, adapter={self.adapter!r})"

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, desc: str | None = None
    ) -> list[list[Generation]]:
        """Return, for each request, its `n` generations in order."""
        if not requests:
            return []
        work = self._generate(list(requests), params, desc)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(work)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called from async code: use a loop of our own
            return pool.submit(asyncio.run, work).result()

    async def _generate(
        self, requests: list[GenerationRequest], params: SamplingParams, desc: str | None
    ) -> list[list[Generation]]:
        caller = Caller([s.info for s in self._servers], self.timeout, self._token)
        slots = asyncio.Semaphore(self.concurrency * len(self._servers))
        total = sum(r.n for r in requests)
        results: list[list[Generation | None]] = [[None] * r.n for r in requests]
        with tqdm(total=total, desc=desc, unit="sample") as progress:

            async def one(i: int, k: int) -> None:
                results[i][k] = await self._sample(caller, slots, requests[i], params, sample_seed(params.seed, i, k))
                progress.update(1)

            tasks = [asyncio.ensure_future(one(i, k)) for i, r in enumerate(requests) for k in range(r.n)]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._stats.response_format_fallbacks += caller.format_fallbacks
                await caller.close()
        return results  # type: ignore[return-value]

    def _pick(self) -> _Server:
        return min(self._servers, key=lambda s: (s.failing > 0, s.in_flight, s.sent))

    async def _sample(
        self,
        caller: Caller,
        slots: asyncio.Semaphore,
        request: GenerationRequest,
        params: SamplingParams,
        seed: int,
    ) -> Generation:
        stats = self._stats
        attempt = 0
        while True:
            async with slots:
                server = self._pick()
                server.in_flight += 1
                server.sent += 1
                stats.requests += 1
                stats.requests_by_url[server.info.url] += 1
                try:
                    reply = await asyncio.wait_for(
                        caller.chat(server.info, request.messages, params, seed, request.json_schema, self.adapter),
                        self.timeout,
                    )
                    failure = None
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    failure = classify(error)
                finally:
                    server.in_flight -= 1
            if failure is None:
                server.failing = 0
                return self._accept(reply, request)
            if not failure.retryable:
                stats.failures[failure.reason] += 1
                return Generation(text="", num_tokens=0, finish_reason=ERROR_FINISH_REASON)
            server.failing += 1
            if attempt >= self.retry.max_retries:
                stats.failures[failure.reason] += 1
                raise EndpointUnavailableError(server.info.url, failure, attempt + 1)
            stats.retries[failure.reason] += 1
            await self.retry.sleep(attempt, failure, self._rng)
            attempt += 1

    def _accept(self, reply, request: GenerationRequest) -> Generation:
        stats = self._stats
        stats.samples += 1
        stats.prompt_tokens += reply.prompt_tokens
        stats.completion_tokens += reply.generation.num_tokens
        if request.json_schema is not None and self.validate_schema:
            stats.schema_checked += 1
            if not self.matches_schema(reply.generation.text, request.json_schema):
                stats.schema_invalid += 1
        return reply.generation

    def matches_schema(self, text: str, schema: dict[str, Any]) -> bool:
        """Whether `text` is JSON that validates against `schema`."""
        import json

        from jsonschema import Draft202012Validator

        key = schema_key(schema)
        if key not in self._validators:
            self._validators[key] = Draft202012Validator(schema)
        try:
            value = json.loads(text)
        except ValueError:
            return False
        return self._validators[key].is_valid(value)
