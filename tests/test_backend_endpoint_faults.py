"""Fault injection: a faulty proxy between the endpoint backend and a real `rlrf-hub serve` on the tiny model.

The stage finishes through timeouts, 5xx, 429, dropped connections and schema-breaking replies, within its retry
limits, counting each; an endpoint that is down for good stops it with `EndpointUnavailableError`, and what it had
checkpointed is kept for the rerun.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_recipe, write_recipe
from datasets import Dataset, load_dataset
from faulty_proxy import FaultyProxy
from huggingface_hub import DatasetCard

from rlrf_hub.backends.base import GenerationRequest, SamplingParams
from rlrf_hub.backends.endpoint import EndpointBackend, EndpointUnavailableError
from rlrf_hub.backends.retry import RetryPolicy
from rlrf_hub.config import RLRFArguments, parse_recipe
from rlrf_hub.feedback import judge
from rlrf_hub.loop import run

FAST_RETRY = RetryPolicy(max_retries=3, base_delay=0.05, max_delay=0.3)


@pytest.fixture(scope="module")
def server(tiny_model):
    from rlrf_hub.serving.launch import start_server

    with start_server(tiny_model, max_batch_size=8) as handle:
        yield handle


def _responses(n: int) -> tuple[list[dict], dict]:
    prompt = {"prompt_id": "p", "prompt": "Why is the sky blue?", "task": "general"}
    responses = [
        {
            "prompt_id": "p",
            "response_id": f"r{i}",
            "origin": "candidate",
            "task": "general",
            "prompt": prompt["prompt"],
            "response": f"Because of scattering, reason {i}.",
        }
        for i in range(n)
    ]
    return responses, {"p": prompt}


def test_the_judge_finishes_through_every_kind_of_fault_and_counts_them(server):
    schedule = ["503", "429", "close", "reset", "500", "garble"]
    args = RLRFArguments(feedback_max_new_tokens=40, max_parse_retries=2)
    responses, prompts = _responses(4)
    with FaultyProxy(server.url, schedule) as proxy:
        retry = RetryPolicy(max_retries=6, base_delay=0.05, max_delay=0.3)
        backend = EndpointBackend(proxy.url, concurrency=4, timeout=120, retry=retry)
        judge_stats: dict = {}
        rows = judge.rate_responses(responses, prompts, {"p": ["Readability"]}, backend, args, 0, judge_stats)
    assert [row["response_id"] for row in rows] == ["r0", "r1", "r2", "r3"]
    assert all(row["parse_status"] in ("strict", "tolerant") for row in rows), "every fault was recovered from"
    stats = backend.stats
    assert stats["retries"] == {"server_error": 2, "rate_limited": 1, "connection": 2}
    assert stats["failures"] == {}
    assert stats["schema_invalid"] == 1, "the garbled reply was returned, counted, and asked again by the judge"
    assert judge_stats["judge_retries"] == 1
    assert stats["requests"] == proxy.posts == judge_stats["judge_requests"] + 5
    assert proxy.injected["garble"] == 1 and sum(proxy.injected.values()) == proxy.posts
    counters = backend.counters()
    assert counters["endpoint_retries_connection"] == 2 and counters["endpoint_schema_invalid"] == 1
    assert counters["endpoint_requests"] == proxy.posts and all(isinstance(v, int) for v in counters.values())


def test_a_request_that_times_out_is_sent_again(server):
    request = GenerationRequest([{"role": "user", "content": "Hi"}], n=2)
    with FaultyProxy(server.url, ["timeout"], hold_s=8.0) as proxy:
        backend = EndpointBackend(proxy.url, timeout=4.0, retry=FAST_RETRY)
        outputs = backend.generate([request], SamplingParams(max_new_tokens=2, seed=1))[0]
    assert len(outputs) == 2 and all(g.finish_reason != "error" for g in outputs)
    assert backend.stats["retries"] == {"timeout": 1} and backend.stats["requests"] == proxy.posts == 3


def test_an_endpoint_failing_beyond_its_retries_stops_with_a_clear_error(server):
    request = GenerationRequest([{"role": "user", "content": "Hi"}])
    with FaultyProxy(server.url, default="503") as proxy:
        backend = EndpointBackend(proxy.url, retry=FAST_RETRY, token="hf_secret_value_42")
        with pytest.raises(EndpointUnavailableError) as caught:
            backend.generate([request] * 3, SamplingParams(max_new_tokens=4))
    error = caught.value
    assert error.url == proxy.url and error.reason == "server_error" and error.attempts == 4
    assert proxy.url in str(error) and "HTTP 503" in str(error) and "hf_secret_value_42" not in str(error)
    assert backend.stats["failures"] == {"server_error": 1}


def _feedback_parts(out: Path) -> list[dict]:
    parts = sorted((out / "iter-0" / ".work" / "feedback").glob("part-*.parquet"))
    return [row for part in parts for row in Dataset.from_parquet(str(part))]


def test_a_dead_endpoint_keeps_the_checkpointed_feedback_and_a_rerun_finishes(server, data_dir, tmp_path):
    out = tmp_path / "out"
    settings = {
        "num_iterations": 1,
        "feedback_backend": "endpoint",
        "feedback_batch_size": 1,
        "endpoint_max_retries": 1,
        "endpoint_concurrency": 2,
    }
    path = write_recipe(tmp_path / "recipe.yaml", **tiny_recipe(data_dir, out, **settings))
    with FaultyProxy(server.url, die_after=6) as proxy:
        with pytest.raises(EndpointUnavailableError, match=proxy.url):
            run(parse_recipe(["--config", str(path), "--feedback_endpoint", proxy.url]))
    kept = _feedback_parts(out)
    candidates = load_dataset(str(out / "iter-0" / "candidates"), split="train")
    assert 0 < len(kept) < len(candidates), "the chunks rated before the endpoint died are on disk"
    assert any(row["parse_status"] in ("strict", "tolerant") for row in kept), "judged rows among them"

    run(parse_recipe(["--config", str(path), "--feedback_endpoint", server.url]))
    feedback = {row["response_id"]: row for row in load_dataset(str(out / "iter-0" / "feedback"), split="train")}
    assert set(candidates["response_id"]) <= set(feedback)
    for row in kept:
        assert feedback[row["response_id"]]["raw_feedback"] == row["raw_feedback"], "kept rows are not redone"
    assert (out / "adapters" / "M1" / "adapter_config.json").is_file()
    card = DatasetCard.load(out / "iter-0" / "feedback" / "README.md").data.rlrf
    assert card["feedback_model"]["backend"] == "endpoint"
    assert card["endpoint"]["endpoint_requests"] > 0, "the endpoint's request and failure counts are on the card"
