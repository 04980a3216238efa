"""The two HTTP dialects an endpoint backend speaks, and how a server's dialect is found out.

Both dialects use the chat route, `/v1/chat/completions`: the server applies the chat template of the model it
serves (the same template the in-process backend applies), so the client needs no tokenizer, and one request
shape covers the judge (JSON-constrained) and the policy (free text).

- `tgi`: text-generation-inference and `rlrf-hub serve`, recognised by `GET /info`. Sent through
  `huggingface_hub.AsyncInferenceClient.chat_completion`: `response_format={"type": "json", "value": schema}`
  (TGI's grammar), `seed`, and `model` = the LoRA adapter to sample from, or `"tgi"` for the base model (TGI's
  chat route reads any other `model` as an `adapter_id`).
- `openai`: vLLM, SGLang, llama.cpp and other OpenAI-compatible servers. `model` = the adapter's served name,
  else the model the server lists at `/v1/models`; `response_format={"type": "json_schema", "json_schema":
  {"name": ..., "schema": ..., "strict": true}}`. The body is posted as is through huggingface_hub's HTTP session:
  `AsyncInferenceClient` rewrites a `json_schema` response format into TGI's `json_object` form for every URL,
  which OpenAI-compatible servers read as "any JSON" and so lose the schema. Servers that reject `json_schema`
  (llama-cpp-python only knows `{"type": "json_object", "schema": ...}`) are detected by the error they answer
  (a 400, 422 or 500 whose body names `response_format`) and asked again in that older form, once per server;
  later requests use it directly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx2
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import build_hf_headers, get_async_session, get_session, hf_raise_for_status

from .base import Generation, SamplingParams
from .retry import BadReplyError, RetryPolicy, classify

AUTO = "auto"
TGI = "tgi"
OPENAI = "openai"
DIALECTS = (AUTO, TGI, OPENAI)
JSON_SCHEMA_STYLE = "json_schema"
JSON_OBJECT_STYLE = "json_object"
TGI_BASE_MODEL = "tgi"
SCHEMA_NAME = "response"


class DialectError(ValueError):
    """The dialect asked for is not one this backend speaks."""


@dataclass
class ServerInfo:
    """What a server said about itself.

    Attributes:
        url: the base URL, without a trailing slash.
        dialect: `tgi` or `openai`.
        model_id: the model the server serves (TGI's `/info` `model_id`, the first id of `/v1/models`), if known.
        revision: TGI's `model_sha`, if given.
        schema_style: how `response_format` carries a schema for an `openai` server (changes at most once).
    """

    url: str
    dialect: str
    model_id: str | None = None
    revision: str | None = None
    schema_style: str = JSON_SCHEMA_STYLE


def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"endpoint URL must start with http:// or https://, got {url!r}")
    return url


def detect(url: str, dialect: str, policy: RetryPolicy, timeout: float, token: str | None = None) -> ServerInfo:
    """Ask a server who it is; `dialect="auto"` picks `tgi` when `GET /info` answers with a `model_id`.

    Connection errors, timeouts and 5xx are retried with `policy`; when they persist the last one is raised.
    """
    if dialect not in DIALECTS:
        raise DialectError(f"endpoint_dialect must be one of {DIALECTS}, got {dialect!r}")
    url = normalise_url(url)
    headers = build_hf_headers(token=token)
    if dialect in (AUTO, TGI):
        info = _get_json(f"{url}/info", headers, policy, timeout)
        if isinstance(info, dict) and info.get("model_id"):
            return ServerInfo(url, TGI, str(info["model_id"]), info.get("model_sha"))
        if dialect == TGI:
            return ServerInfo(url, TGI)
    models = _get_json(f"{url}/v1/models", headers, policy, timeout)
    served = None
    if isinstance(models, dict) and isinstance(models.get("data"), list) and models["data"]:
        served = models["data"][0].get("id")
    return ServerInfo(url, OPENAI, served)


def _get_json(url: str, headers: dict, policy: RetryPolicy, timeout: float) -> Any:
    """The JSON a GET answers, or `None` for a 4xx or a body that is not JSON; retryable failures are retried."""
    attempt = 0
    while True:
        try:
            response = get_session().get(url, headers=headers, timeout=timeout)
            if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                return None
            hf_raise_for_status(response)
            try:
                return response.json()
            except ValueError:
                return None
        except Exception as error:
            failure = classify(error)
            if attempt >= policy.max_retries:
                raise
            time.sleep(policy.delay(attempt, failure.retry_after))
            attempt += 1


def sampling_arguments(params: SamplingParams, seed: int) -> dict[str, Any]:
    """Temperature, top-p, length and seed as both dialects name them; greedy is temperature 0."""
    arguments: dict[str, Any] = {"max_tokens": params.max_new_tokens, "seed": seed}
    if not params.do_sample or params.temperature <= 0:
        arguments["temperature"] = 0.0
        return arguments
    arguments["temperature"] = params.temperature
    if params.top_p < 1.0:
        arguments["top_p"] = params.top_p
    return arguments


def tgi_arguments(
    messages: list[dict[str, str]],
    params: SamplingParams,
    seed: int,
    schema: dict[str, Any] | None,
    adapter: str | None,
) -> dict[str, Any]:
    """Keyword arguments of `AsyncInferenceClient.chat_completion` for a TGI server."""
    arguments = {"messages": messages, "model": adapter or TGI_BASE_MODEL, **sampling_arguments(params, seed)}
    if schema is not None:
        arguments["response_format"] = {"type": "json", "value": schema}
    return arguments


def openai_body(
    messages: list[dict[str, str]],
    params: SamplingParams,
    seed: int,
    schema: dict[str, Any] | None,
    model: str,
    schema_style: str = JSON_SCHEMA_STYLE,
) -> dict[str, Any]:
    """The JSON body of an OpenAI `/v1/chat/completions` request."""
    body = {"model": model, "messages": messages, "n": 1, **sampling_arguments(params, seed)}
    if schema is not None:
        if schema_style == JSON_SCHEMA_STYLE:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": SCHEMA_NAME, "schema": schema, "strict": True},
            }
        else:
            body["response_format"] = {"type": "json_object", "schema": schema}
    return body


@dataclass
class Reply:
    generation: Generation
    prompt_tokens: int


def reply_from_chat(data: Any) -> Reply:
    """Text, finish reason and token counts of a chat completion (a dict, or huggingface_hub's output type)."""
    try:
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
        finish = choice.get("finish_reason")
        usage = data.get("usage") or {}
    except (KeyError, IndexError, TypeError, AttributeError) as err:
        raise BadReplyError(f"chat completion without choices[0].message: {str(data)[:200]}") from err
    generation = Generation(
        text=text,
        num_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason="length" if finish == "length" else "stop",
    )
    return Reply(generation, int(usage.get("prompt_tokens") or 0))


class Caller:
    """Sends one chat request to one server in its dialect; lives inside one event loop (one `generate` call)."""

    def __init__(self, servers: list[ServerInfo], timeout: float, token: str | None):
        self.timeout = timeout
        self.token = token
        self.clients = {
            s.url: AsyncInferenceClient(base_url=s.url, timeout=timeout, token=token)
            for s in servers
            if s.dialect == TGI
        }
        self.headers = build_hf_headers(token=token)
        self.session: httpx2.AsyncClient | None = None
        self.format_fallbacks = 0

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
        if self.session is not None:
            await self.session.aclose()

    async def chat(
        self,
        server: ServerInfo,
        messages: list[dict[str, str]],
        params: SamplingParams,
        seed: int,
        schema: dict[str, Any] | None,
        adapter: str | None,
    ) -> Reply:
        if server.dialect == TGI:
            try:
                output = await self.clients[server.url].chat_completion(
                    **tgi_arguments(messages, params, seed, schema, adapter)
                )
            except (ValueError, KeyError) as err:
                if isinstance(err, HfHubHTTPError):
                    raise
                raise BadReplyError(f"unreadable reply from {server.url}: {err}") from err
            return reply_from_chat(output)
        model = adapter or server.model_id or "default"
        try:
            return await self._post_openai(
                server, openai_body(messages, params, seed, schema, model, server.schema_style)
            )
        except HfHubHTTPError as err:
            if schema is None or server.schema_style != JSON_SCHEMA_STYLE or not _rejects_response_format(err):
                raise
        server.schema_style = JSON_OBJECT_STYLE
        self.format_fallbacks += 1
        return await self._post_openai(server, openai_body(messages, params, seed, schema, model, server.schema_style))

    async def _post_openai(self, server: ServerInfo, body: dict[str, Any]) -> Reply:
        if self.session is None:
            self.session = get_async_session()
        response = await self.session.post(
            f"{server.url}/v1/chat/completions", json=body, headers=self.headers, timeout=self.timeout
        )
        hf_raise_for_status(response)
        try:
            data = response.json()
        except ValueError as err:
            raise BadReplyError(f"reply from {server.url} is not JSON: {response.text[:200]!r}") from err
        return reply_from_chat(data)


def _rejects_response_format(error: HfHubHTTPError) -> bool:
    """A validation error about `response_format` (llama-cpp-python reports its validation errors as 500)."""
    response = error.response
    if response is None or response.status_code not in (400, 422, 500):
        return False
    try:
        text = response.text
    except Exception:
        return False
    return "response_format" in text


def schema_key(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True)
