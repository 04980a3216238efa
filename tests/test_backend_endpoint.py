"""The endpoint backend end to end against `rlrf-hub serve` on the tiny model, in both dialects."""

from __future__ import annotations

import pytest
from faulty_proxy import FaultyProxy

from rlrf_hub.backends.base import GenerationRequest, SamplingParams
from rlrf_hub.backends.endpoint import EndpointBackend, EndpointUnavailableError
from rlrf_hub.backends.retry import RetryPolicy
from rlrf_hub.feedback.parsing import parse_ratings
from rlrf_hub.feedback.templates import rating_messages, rating_schema

FAST_RETRY = RetryPolicy(max_retries=2, base_delay=0.05, max_delay=0.2)
ASPECTS = ["Readability", "Completeness"]
CRITIQUE_CHARS = 30
GREEDY = SamplingParams(max_new_tokens=8, do_sample=False)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model):
    """A LoRA adapter with random (non-zero) weights, so that sampling from it differs from the base model."""
    import torch
    from peft import LoraConfig, get_peft_model

    from rlrf_hub.models import load_causal_lm

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(load_causal_lm(tiny_model), config)
    path = tmp_path_factory.mktemp("adapter") / "m1"
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def server(tiny_model, adapter_dir):
    from rlrf_hub.serving.launch import start_server

    with start_server(tiny_model, adapters=(adapter_dir,), max_batch_size=8) as handle:
        yield handle


def _judge_request(n: int = 1) -> GenerationRequest:
    messages = rating_messages("Explain what a prime number is.", "A number with exactly two divisors.", ASPECTS, None)
    return GenerationRequest(messages, n=n, json_schema=rating_schema(ASPECTS, CRITIQUE_CHARS))


def test_tgi_is_detected_and_samples_differ_per_seed(server, tiny_model):
    backend = EndpointBackend(server.url, concurrency=4)
    assert backend.dialects == {server.url: "tgi"}
    assert backend.model_id == tiny_model, "the model id comes from /info when the recipe names none"
    request = GenerationRequest([{"role": "user", "content": "Say something."}], n=3)
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=5)
    outputs = backend.generate([request, request], params, desc="tgi samples")
    texts = [g.text for generations in outputs for g in generations]
    assert len(set(texts)) == 6, "identical requests and their n copies all get their own seed"
    again = backend.generate([request, request], params)
    assert [g.text for generations in again for g in generations] == texts, "seeds are deterministic"
    stats = backend.stats
    assert stats["samples"] == stats["requests"] == 12
    assert stats["completion_tokens"] == 2 * sum(g.num_tokens for generations in outputs for g in generations)
    assert stats["prompt_tokens"] > 0 and stats["retries"] == {} and stats["failures"] == {}
    assert backend.total_tokens == stats["completion_tokens"]


@pytest.mark.parametrize("dialect", ["tgi", "openai"])
def test_constrained_replies_follow_the_feedback_schema(server, dialect):
    backend = EndpointBackend(server.url, dialect=dialect, concurrency=2, model_id="judge", revision="r1")
    assert (backend.model_id, backend.revision) == ("judge", "r1")
    params = SamplingParams(max_new_tokens=72, temperature=0.7, seed=2)
    generations = backend.generate([_judge_request(n=2)], params, desc=f"{dialect} feedback")[0]
    for generation in generations:
        assert backend.matches_schema(generation.text, rating_schema(ASPECTS, CRITIQUE_CHARS)), generation.text
        assert parse_ratings(generation.text, ASPECTS, CRITIQUE_CHARS).status == "strict"
    assert backend.stats["schema_checked"] == 2 and backend.stats["schema_invalid"] == 0
    assert backend.stats["dialects"] == {server.url: dialect}


def test_invalid_replies_are_returned_and_counted(server):
    backend = EndpointBackend(server.url)
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    assert backend.matches_schema('{"x": 3}', schema)
    assert not backend.matches_schema('{"x": "3"}', schema) and not backend.matches_schema("x = 3", schema)
    request = GenerationRequest([{"role": "user", "content": "Hi"}], n=1, json_schema=schema)
    with FaultyProxy(server.url, ["garble"]) as proxy:
        garbled = EndpointBackend(proxy.url)
        text = garbled.generate([request], GREEDY)[0][0].text
    assert not garbled.matches_schema(text, schema)
    assert garbled.stats["schema_invalid"] == 1 and garbled.stats["failures"] == {}


def test_the_policy_samples_from_an_adapter_the_server_holds(server, adapter_dir, tiny_model):
    from rlrf_hub.backends.transformers_backend import TransformersBackend

    request = GenerationRequest([{"role": "user", "content": "Tell me about rivers."}])
    for dialect in ("tgi", "openai"):
        base = EndpointBackend(server.url, dialect=dialect).generate([request], GREEDY)[0][0].text
        tuned = EndpointBackend(server.url, dialect=dialect, adapter=adapter_dir)
        assert tuned.adapter == adapter_dir
        adapted = tuned.generate([request], GREEDY)[0][0].text
        assert adapted != base, f"{dialect}: the adapter changes what is generated"
    local = TransformersBackend.from_pretrained(tiny_model, adapter=adapter_dir, batch_size=1)
    assert local.generate([request], GREEDY)[0][0].text == adapted, "the server applies the same adapter"


def test_a_request_the_server_rejects_is_not_retried(server):
    backend = EndpointBackend(server.url, retry=FAST_RETRY)
    too_long = SamplingParams(max_new_tokens=10**6, do_sample=False)
    generation = backend.generate([GenerationRequest([{"role": "user", "content": "Hi"}])], too_long)[0][0]
    assert (generation.text, generation.num_tokens, generation.finish_reason) == ("", 0, "error")
    assert backend.stats["requests"] == 1 and backend.stats["failures"] == {"client_error": 1}


def test_requests_go_to_the_least_busy_of_several_servers(server):
    with FaultyProxy(server.url) as first, FaultyProxy(server.url) as second:
        backend = EndpointBackend([first.url, second.url], concurrency=2)
        request = GenerationRequest([{"role": "user", "content": "Count."}], n=8)
        backend.generate([request], SamplingParams(max_new_tokens=4, seed=1))
        assert first.posts > 0 and second.posts > 0 and first.posts + second.posts == 8
        assert sorted(backend.stats["requests_by_url"].values()) == sorted([first.posts, second.posts])


def test_one_dead_server_of_two_is_routed_around(server):
    with FaultyProxy(server.url, die_after=1) as dying, FaultyProxy(server.url) as healthy:
        backend = EndpointBackend([dying.url, healthy.url], concurrency=1, retry=FAST_RETRY)
        request = GenerationRequest([{"role": "user", "content": "Go on."}], n=6)
        outputs = backend.generate([request], SamplingParams(max_new_tokens=4, seed=1))[0]
    assert len(outputs) == 6 and all(g.finish_reason != "error" for g in outputs)
    assert backend.stats["retries"].get("connection", 0) >= 1 and backend.stats["failures"] == {}


def test_an_endpoint_that_never_answers_is_reported_by_url_without_the_token():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(EndpointUnavailableError) as caught:
        EndpointBackend(url, retry=FAST_RETRY, token="hf_not_a_real_token_123")
    message = str(caught.value)
    assert url in message and "connection" in message and "hf_not_a_real_token_123" not in message
    assert caught.value.attempts == FAST_RETRY.max_retries + 1


def test_recipes_switch_stages_to_endpoints_by_configuration(server, adapter_dir, data_dir, tmp_path):
    import gc

    from conftest import tiny_recipe, write_recipe

    from rlrf_hub.config import parse_recipe, run_settings
    from rlrf_hub.stages.backends import judge_backend, policy_backend

    settings = {"policy_backend": "endpoint", "policy_endpoint": server.url, "feedback_backend": "serve"}
    path = write_recipe(tmp_path / "recipe.yaml", **tiny_recipe(data_dir, tmp_path / "out", **settings))
    recipe = parse_recipe(["--config", str(path), "--endpoint_dialect", "openai", "--endpoint_concurrency", "3"])
    policy = policy_backend(run_settings(recipe), adapter_dir)
    assert isinstance(policy, EndpointBackend) and policy.adapter == adapter_dir
    assert (policy.model_id, policy.urls, policy.concurrency) == ("embedded:tiny", [server.url], 3)
    assert policy.dialects == {server.url: "openai"}

    judge = judge_backend(run_settings(recipe))  # `serve`: starts rlrf-hub serve for the judge
    assert isinstance(judge, EndpointBackend) and judge.model_id == "embedded:tiny"
    served_url = judge.urls[0]
    assert served_url != server.url and judge.adapter is None
    request = GenerationRequest([{"role": "user", "content": "Hi"}], json_schema={"type": "boolean"})
    reply = judge.generate([request], SamplingParams(max_new_tokens=8, seed=1))[0][0]
    assert reply.text in ("true", "false")
    del judge, reply
    gc.collect()  # what the loop does when a stage no longer needs its backends
    with pytest.raises(EndpointUnavailableError):
        EndpointBackend(served_url, retry=FAST_RETRY)
