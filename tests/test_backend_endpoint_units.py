"""The endpoint backend's pieces that need no server: seeds, retry policy, failure classes, request bodies, config."""

from __future__ import annotations

import random

import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError

from rlrf_hub.backends.base import SamplingParams
from rlrf_hub.backends.dialects import normalise_url, openai_body, reply_from_chat, tgi_arguments
from rlrf_hub.backends.endpoint import sample_seed
from rlrf_hub.backends.retry import BadReplyError, RetryPolicy, classify, parse_retry_after
from rlrf_hub.config import RecipeError, RLRFArguments, _validate_endpoints

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def test_every_sample_of_a_call_gets_its_own_deterministic_seed():
    seeds = {sample_seed(7, i, k) for i in range(50) for k in range(10)}
    assert len(seeds) == 500
    assert sample_seed(7, 3, 1) == sample_seed(7, 3, 1)
    assert sample_seed(8, 3, 1) != sample_seed(7, 3, 1)
    assert all(0 <= s < 2**31 for s in seeds)


def test_backoff_grows_exponentially_within_jitter_and_caps():
    policy = RetryPolicy(max_retries=6, base_delay=1.0, max_delay=10.0, jitter=0.25)
    rng = random.Random(0)
    for attempt, nominal in enumerate([1, 2, 4, 8, 10, 10]):
        delays = [policy.delay(attempt, rng=rng) for _ in range(200)]
        assert min(delays) >= 0.75 * nominal - 1e-9 and max(delays) <= 1.25 * nominal + 1e-9
        assert max(delays) - min(delays) > 0.1 * nominal, "jitter spreads retries out"


def test_retry_after_is_a_floor_capped_by_max_delay():
    policy = RetryPolicy(base_delay=0.1, max_delay=5.0, jitter=0.0)
    assert policy.delay(0, retry_after=2.0) == 2.0
    assert policy.delay(0, retry_after=60.0) == 5.0
    assert parse_retry_after("3") == 3.0 and parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_bad_retry_settings_are_refused():
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=2)


def _http_error(status: int, headers: dict | None = None, body: str = '{"error": "x"}') -> HfHubHTTPError:
    request = httpx2.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    response = httpx2.Response(status, headers=headers, text=body, request=request)
    return HfHubHTTPError(f"{status}", response=response)


@pytest.mark.parametrize(
    ("error", "reason", "retryable"),
    [
        (httpx2.ConnectError("refused"), "connection", True),
        (httpx2.RemoteProtocolError("peer closed connection"), "connection", True),
        (httpx2.ReadTimeout("slow"), "timeout", True),
        (TimeoutError(), "timeout", True),
        (_http_error(503), "server_error", True),
        (_http_error(500), "server_error", True),
        (_http_error(424), "server_error", True),
        (_http_error(429, {"Retry-After": "2"}), "rate_limited", True),
        (_http_error(422), "client_error", False),
        (_http_error(400), "client_error", False),
        (BadReplyError("cut short"), "bad_response", True),
    ],
)
def test_failures_are_sorted_into_retry_reasons(error, reason, retryable):
    failure = classify(error)
    assert (failure.reason, failure.retryable) == (reason, retryable)


def test_a_wrapped_http_error_keeps_its_status_and_retry_after():
    try:
        try:
            raise _http_error(429, {"Retry-After": "1.5"})
        except HfHubHTTPError as inner:
            raise RuntimeError("overloaded") from inner
    except RuntimeError as outer:
        failure = classify(outer)
    assert failure.status == 429 and failure.retry_after == 1.5


def test_programming_errors_are_not_swallowed_as_retries():
    with pytest.raises(KeyError):
        classify(KeyError("bug"))


def test_request_bodies_of_both_dialects():
    sampled = SamplingParams(max_new_tokens=32, temperature=0.7, top_p=0.9, seed=1)
    greedy = SamplingParams(max_new_tokens=8, do_sample=False)
    messages = [{"role": "user", "content": "hi"}]
    tgi = tgi_arguments(messages, sampled, 11, SCHEMA, None)
    assert tgi["model"] == "tgi" and tgi["response_format"] == {"type": "json", "value": SCHEMA}
    assert (tgi["seed"], tgi["temperature"], tgi["top_p"], tgi["max_tokens"]) == (11, 0.7, 0.9, 32)
    assert tgi_arguments(messages, greedy, 1, None, "my-adapter")["model"] == "my-adapter"
    assert "response_format" not in tgi_arguments(messages, greedy, 1, None, None)
    body = openai_body(messages, greedy, 5, SCHEMA, "served")
    assert body["temperature"] == 0.0 and "top_p" not in body and body["model"] == "served"
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    older = openai_body(messages, greedy, 5, SCHEMA, "served", "json_object")
    assert older["response_format"] == {"type": "json_object", "schema": SCHEMA}


def test_replies_are_read_with_their_token_counts():
    reply = reply_from_chat(
        {
            "choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4},
        }
    )
    assert (reply.generation.text, reply.generation.num_tokens, reply.generation.finish_reason) == ("ok", 4, "length")
    assert reply.prompt_tokens == 9
    assert reply_from_chat({"choices": [{"message": {"content": None}, "finish_reason": "eos_token"}]}).generation == (
        reply_from_chat({"choices": [{"message": {"content": ""}, "finish_reason": "stop"}]}).generation
    )
    with pytest.raises(BadReplyError):
        reply_from_chat({"object": "error"})


def test_urls_are_normalised_and_checked():
    assert normalise_url(" http://127.0.0.1:8080/v1/ ") == "http://127.0.0.1:8080"
    with pytest.raises(ValueError, match="http"):
        normalise_url("127.0.0.1:8080")


def test_recipe_endpoint_settings_are_validated():
    args = RLRFArguments(feedback_backend="endpoint", feedback_endpoint="http://a:1, http://b:2")
    _validate_endpoints(args)
    assert args.feedback_endpoint == ["http://a:1", "http://b:2"]
    with pytest.raises(RecipeError, match="feedback_endpoint"):
        _validate_endpoints(RLRFArguments(feedback_backend="endpoint"))
    with pytest.raises(RecipeError, match="policy_endpoint"):
        _validate_endpoints(RLRFArguments(policy_backend="endpoint", policy_endpoint=["ftp://x"]))
    with pytest.raises(RecipeError, match="endpoint_dialect"):
        _validate_endpoints(RLRFArguments(endpoint_dialect="vllm"))
    with pytest.raises(RecipeError, match="endpoint_max_retries"):
        _validate_endpoints(RLRFArguments(endpoint_max_retries=-1))
