"""`rlrf-hub serve` over real HTTP on 127.0.0.1 with the tiny model: TGI's shapes (checked against TGI's published
OpenAPI spec), streaming, grammars, errors, batching, and the `huggingface_hub` inference clients."""

import asyncio
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch
from conftest import half_rounded
from huggingface_hub import AsyncInferenceClient, InferenceClient
from huggingface_hub.errors import ValidationError as HubValidationError

from rlrf_hub.backends.projections import HalfWeightLinear, half_weights_available
from rlrf_hub.serving.launch import start_server

FEEDBACK_SCHEMA = {
    "type": "object",
    "properties": {
        "rating": {"enum": [-1, 0, 1]},
        "helpful": {"type": "boolean"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "critique": {"type": "string", "maxLength": 16},
    },
    "required": ["rating", "helpful", "score", "critique"],
}


# A small validator for the parts of OpenAPI / JSON Schema that TGI's spec and these tests use ---------------------
def schema_errors(value, schema, spec, path="$"):
    if "$ref" in schema:
        return schema_errors(value, spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]], spec, path)
    if value is None and schema.get("nullable"):
        return []
    errors = []
    for sub in schema.get("allOf", []):
        errors += schema_errors(value, sub, spec, path)
    if "oneOf" in schema and all(schema_errors(value, sub, spec, path) for sub in schema["oneOf"]):
        errors.append(f"{path}: matches no oneOf branch")
    kinds = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "integer": int,
        "number": (int, float),
    }
    kind = schema.get("type")
    if kind is not None:
        ok = isinstance(value, kinds[kind]) and not (kind in ("integer", "number") and isinstance(value, bool))
        if not ok:
            return errors + [f"{path}: {value!r} is not of type {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing {key}")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += schema_errors(value[key], sub, spec, f"{path}.{key}")
        if schema.get("additionalProperties") is False:
            errors += [f"{path}: extra key {key}" for key in value if key not in schema.get("properties", {})]
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], spec, f"{path}[{i}]")
    if isinstance(value, str) and "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"{path}: longer than {schema['maxLength']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: above {schema['maximum']}")
    return errors


@pytest.fixture(scope="module")
def spec(data_dir):
    return json.loads((data_dir / "tgi" / "openapi.json").read_text())


@pytest.fixture(scope="module")
def conforms(spec):
    def check(value, component):
        errors = schema_errors(value, {"$ref": f"#/components/schemas/{component}"}, spec)
        assert not errors, errors

    return check


@pytest.fixture(scope="module")
def server(tiny_model):
    with start_server("embedded:tiny", threads=1, max_batch_size=8, max_total_tokens=512, batch_window_ms=30) as s:
        yield s


def post(server, path, body, **kwargs):
    return requests.post(server.url + path, json=body, timeout=60, **kwargs)


def generate(server, inputs="Hello there", **parameters):
    response = post(server, "/generate", {"inputs": inputs, "parameters": parameters})
    assert response.status_code == 200, response.text
    return response.json()


def sse_events(response):
    """The JSON payloads of a Server-Sent Events response, `[DONE]` kept as a string."""
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if line and line.startswith("data:"):
            payload = line[len("data:") :].strip()
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def metric_samples(server, name):
    text = requests.get(server.url + "/metrics", timeout=10).text
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line.startswith(name)}


# Description routes --------------------------------------------------------------------------------------------
def test_health_info_and_models(server, conforms):
    assert requests.get(server.url + "/health", timeout=10).status_code == 200
    info = requests.get(server.url + "/info", timeout=10).json()
    conforms(info, "Info")
    assert info["model_id"] == "embedded:tiny"
    assert info["max_total_tokens"] == 512 and info["max_input_tokens"] == 511 and info["max_batch_size"] == 8
    models = requests.get(server.url + "/v1/models", timeout=10).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "embedded:tiny"
    conforms(models["data"][0], "ModelInfo")
    assert requests.get(server.url + "/nowhere", timeout=10).status_code == 404


# /generate -----------------------------------------------------------------------------------------------------
def test_generate_details_and_seed_reproducibility(server, conforms):
    first = generate(server, max_new_tokens=12, do_sample=True, seed=7, details=True)
    conforms(first, "GenerateResponse")
    details = first["details"]
    assert details["seed"] == 7
    assert details["generated_tokens"] == len(details["tokens"]) <= 12
    assert details["finish_reason"] in ("length", "eos_token")
    assert first["generated_text"] == "".join(token["text"] for token in details["tokens"] if not token["special"])
    assert all(token["logprob"] <= 0 for token in details["tokens"])
    again = generate(server, max_new_tokens=12, do_sample=True, seed=7, details=True)
    assert again == first
    other = generate(server, max_new_tokens=12, do_sample=True, seed=8, details=True)
    assert [t["id"] for t in other["details"]["tokens"]] != [t["id"] for t in details["tokens"]]
    # Without a seed the server draws one and reports it, so the sample can be replayed.
    drawn = generate(server, max_new_tokens=6, do_sample=True, details=True)
    assert drawn == generate(server, max_new_tokens=6, do_sample=True, details=True, seed=drawn["details"]["seed"])
    assert "details" not in generate(server, max_new_tokens=2)


def greedy_tokens(model, tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def test_greedy_generation_matches_transformers(server, tiny_model):
    """On CPUs with fbgemm the server multiplies by half-precision copies of the weights: its greedy tokens are
    those of the model with its weights rounded to half precision."""
    from rlrf_hub.models import load_causal_lm, load_tokenizer

    model, tokenizer = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    precision = requests.get(server.url + "/info", timeout=10).json()["weight_precision"]
    assert precision == ("float16" if half_weights_available() else "float32")
    swapped = [type(module) is HalfWeightLinear for module in server.service.engine.model.modules()]
    assert any(swapped) == (precision == "float16")
    if precision == "float16":
        model = half_rounded(model)
    prompts = ["Hello there", "A much longer prompt, so that the rows of the batch are padded"]
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda p: generate(server, p, max_new_tokens=10, details=True), prompts))
    for prompt, response in zip(prompts, responses, strict=True):
        expected = greedy_tokens(model, tokenizer, prompt, 10)
        assert [token["id"] for token in response["details"]["tokens"]] == expected


def test_float32_weights_serve_the_models_own_numbers(tiny_model):
    from rlrf_hub.models import load_causal_lm, load_tokenizer

    model, tokenizer = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    with start_server("embedded:tiny", threads=1, max_total_tokens=256, weight_precision="float32") as plain:
        assert requests.get(plain.url + "/info", timeout=10).json()["weight_precision"] == "float32"
        assert not any(type(module) is HalfWeightLinear for module in plain.service.engine.model.modules())
        response = generate(plain, "Hello there", max_new_tokens=10, details=True)
    expected = greedy_tokens(model, tokenizer, "Hello there", 10)
    assert [token["id"] for token in response["details"]["tokens"]] == expected


def test_generate_extras(server, conforms):
    prompt = "The weather today"
    response = generate(
        server, prompt, max_new_tokens=4, details=True, decoder_input_details=True, top_n_tokens=3, seed=1, top_k=50
    )
    conforms(response, "GenerateResponse")
    prefill = response["details"]["prefill"]
    assert prefill[0]["logprob"] is None and all(token["logprob"] <= 0 for token in prefill[1:])
    assert "".join(token["text"] for token in prefill) == prompt
    assert all(len(top) == 3 for top in response["details"]["top_tokens"])
    full = generate(server, prompt, max_new_tokens=4, seed=1, top_k=50, return_full_text=True)
    assert full["generated_text"] == prompt + response["generated_text"]
    best = generate(server, prompt, max_new_tokens=4, best_of=3, do_sample=True, details=True)
    assert len(best["details"]["best_of_sequences"]) == 2
    conforms(best, "GenerateResponse")
    compat = post(server, "/", {"inputs": prompt, "parameters": {"max_new_tokens": 3}})
    assert compat.status_code == 200 and isinstance(compat.json(), list)


def test_stop_sequence(server):
    reference = generate(server, max_new_tokens=8, do_sample=True, seed=3, details=True)
    texts = [token["text"] for token in reference["details"]["tokens"]]
    stop = next(text for text in texts[2:] if text.strip())
    stopped = generate(server, max_new_tokens=8, do_sample=True, seed=3, details=True, stop=[stop])
    assert stopped["details"]["finish_reason"] == "stop_sequence"
    assert stop in stopped["generated_text"]
    assert stopped["details"]["generated_tokens"] == texts.index(stop) + 1


def test_generate_stream_sse(server, conforms):
    body = {"inputs": "Once upon", "parameters": {"max_new_tokens": 10, "do_sample": True, "seed": 11}}
    with post(server, "/generate_stream", body, stream=True) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(response)
    for event in events:
        conforms(event, "StreamResponse")
    assert [event["index"] for event in events] == list(range(1, len(events) + 1))
    assert all(event["generated_text"] is None for event in events[:-1])
    final = events[-1]
    conforms(final["details"], "StreamDetails")
    assert final["details"]["generated_tokens"] == len(events)
    assert final["details"]["seed"] == 11
    streamed = "".join(event["token"]["text"] for event in events if not event["token"]["special"])
    assert final["generated_text"] == streamed
    assert (
        final["generated_text"]
        == generate(server, "Once upon", max_new_tokens=10, do_sample=True, seed=11)["generated_text"]
    )


# Chat completions ----------------------------------------------------------------------------------------------
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]


def test_chat_completion_and_stream_agree(server, conforms):
    body = {"model": "tgi", "messages": MESSAGES, "max_tokens": 12, "seed": 5, "logprobs": True, "top_logprobs": 2}
    completion = post(server, "/v1/chat/completions", body).json()
    conforms(completion, "ChatCompletion")
    choice = completion["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    assert len(choice["logprobs"]["content"]) == completion["usage"]["completion_tokens"]
    assert completion["usage"]["total_tokens"] == sum(
        completion["usage"][key] for key in ("prompt_tokens", "completion_tokens")
    )
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with post(server, "/v1/chat/completions", stream_body, stream=True) as response:
        assert response.status_code == 200
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        conforms(chunk, "ChatCompletionChunk")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == completion["usage"]
    content = "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks[:-1])
    assert content == choice["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == choice["finish_reason"]


def test_chat_n_choices(server):
    completion = post(server, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 6, "n": 3, "seed": 1})
    choices = completion.json()["choices"]
    assert [choice["index"] for choice in choices] == [0, 1, 2]
    assert len({choice["message"]["content"] for choice in choices}) > 1


# Constrained decoding ------------------------------------------------------------------------------------------
def test_json_grammar_output_is_schema_valid(server):
    bodies = [
        {"inputs": "Rate it:", "parameters": {"max_new_tokens": 80, "seed": seed, "do_sample": True, "details": True}}
        for seed in range(6)
    ]
    for body in bodies:
        body["parameters"]["grammar"] = {"type": "json", "value": FEEDBACK_SCHEMA}
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda body: post(server, "/generate", body).json(), bodies))
    for response in responses:
        assert response["details"]["finish_reason"] == "eos_token", response
        assert not schema_errors(json.loads(response["generated_text"]), FEEDBACK_SCHEMA, {})


def test_regex_grammar(server):
    pattern = r"(yes|no), [0-9]{3}"
    for seed in range(3):
        response = generate(
            server, max_new_tokens=30, seed=seed, do_sample=True, grammar={"type": "regex", "value": pattern}
        )
        assert re.fullmatch(pattern, response["generated_text"]), response


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema", "json_schema": {"name": "feedback", "schema": FEEDBACK_SCHEMA, "strict": True}},
        {"type": "json", "value": FEEDBACK_SCHEMA},
    ],
    ids=["openai", "tgi"],
)
def test_chat_response_format(server, response_format):
    body = {"messages": MESSAGES, "max_tokens": 80, "seed": 2, "response_format": response_format}
    content = post(server, "/v1/chat/completions", body).json()["choices"][0]["message"]["content"]
    assert not schema_errors(json.loads(content), FEEDBACK_SCHEMA, {})


# Errors --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/generate", {"inputs": "x", "parameters": {"temperature": 0}}, "`temperature`"),
        ("/generate", {"inputs": "x", "parameters": {"top_p": 2}}, "`top_p`"),
        ("/generate", {"parameters": {}}, "`inputs`"),
        ("/generate", {"inputs": "word " * 600}, "must have less than 512 tokens"),
        ("/generate", {"inputs": "x", "parameters": {"max_new_tokens": 600}}, "must be <= 512"),
        ("/generate", {"inputs": "x", "parameters": {"adapter_id": "/no/such/adapter"}}, "adapter_id"),
        ("/generate", {"inputs": "x", "parameters": {"grammar": {"type": "regex", "value": "("}}}, "grammar"),
        ("/generate_stream", {"inputs": "x", "parameters": {"top_k": -1}}, "`top_k`"),
        ("/v1/chat/completions", {"messages": "hi"}, "`messages`"),
        ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 0}, "`max_tokens`"),
    ],
)
def test_validation_errors_have_tgi_shape(server, conforms, path, body, needle):
    response = post(server, path, body)
    assert response.status_code == 422
    conforms(response.json(), "ErrorResponse")
    assert response.json()["error_type"] == "validation"
    assert needle in response.json()["error"]


def test_malformed_json_body(server, conforms):
    """A body that is not JSON is 400, as TGI's JSON extractor answers it (tests/test_serving_security.py has more)."""
    response = requests.post(server.url + "/generate", data=b"{not json", timeout=10)
    assert response.status_code == 400 and response.json()["error_type"] == "validation"
    conforms(response.json(), "ErrorResponse")


def test_queue_full_is_429_and_a_closed_stream_is_cancelled(tiny_model, conforms):
    with start_server("embedded:tiny", threads=1, max_batch_size=1, max_queue=1, max_total_tokens=4096) as server:
        long_body = {"inputs": "Hello", "parameters": {"max_new_tokens": 4000}}  # greedy on the tiny model: no EOS
        blocker = post(server, "/generate_stream", long_body, stream=True)
        lines = blocker.iter_lines()
        assert next(line for line in lines if line).startswith(b"data:")  # running now
        waiting = {}
        thread = threading.Thread(target=lambda: waiting.update(r=generate(server, max_new_tokens=3)))
        thread.start()
        deadline = time.monotonic() + 30
        while metric_samples(server, "tgi_queue_size").get("tgi_queue_size") != 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        refused = post(server, "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 2}})
        assert refused.status_code == 429
        conforms(refused.json(), "ErrorResponse")
        assert refused.json()["error_type"] == "overloaded"
        blocker.close()  # the server notices on its next write and drops the row
        thread.join(60)
        assert waiting["r"]["generated_text"]
        assert metric_samples(server, "tgi_request_failure")['tgi_request_failure{err="overloaded"}'] == 1


# Batching ------------------------------------------------------------------------------------------------------
def test_concurrent_requests_share_batches(server):
    before = metric_samples(server, "tgi_batch_decode_size")
    parameters = {"max_new_tokens": 16, "top_k": 100}
    bodies = [{"inputs": f"Request {i}", "parameters": {**parameters, "seed": i}} for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda body: post(server, "/generate", body), bodies))
    assert all(response.status_code == 200 for response in responses)
    after = metric_samples(server, "tgi_batch_decode_size")
    single = after['tgi_batch_decode_size_bucket{le="1"}'] - before.get('tgi_batch_decode_size_bucket{le="1"}', 0)
    steps = after["tgi_batch_decode_size_count"] - before.get("tgi_batch_decode_size_count", 0)
    rows = after["tgi_batch_decode_size_sum"] - before.get("tgi_batch_decode_size_sum", 0)
    assert steps > single, "no decode step ran more than one row"
    assert rows / steps > 2
    assert metric_samples(server, "tgi_request_count")["tgi_request_count"] >= 8


# The huggingface_hub clients -------------------------------------------------------------------------------------
def test_inference_client(server):
    client = InferenceClient(server.url)
    output = client.text_generation(
        "Rate it:",
        max_new_tokens=80,
        details=True,
        seed=4,
        do_sample=True,
        grammar={"type": "json", "value": FEEDBACK_SCHEMA},
    )
    assert output.details.finish_reason == "eos_token" and output.details.seed == 4
    assert not schema_errors(json.loads(output.generated_text), FEEDBACK_SCHEMA, {})
    tokens = list(client.text_generation("Hi", max_new_tokens=5, stream=True))
    assert len(tokens) == 5
    completion = client.chat_completion(
        MESSAGES,
        max_tokens=80,
        seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "feedback", "schema": FEEDBACK_SCHEMA}},
    )
    assert not schema_errors(json.loads(completion.choices[0].message.content), FEEDBACK_SCHEMA, {})
    chunks = list(client.chat_completion(MESSAGES, max_tokens=4, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    with pytest.raises(HubValidationError, match="max_new_tokens"):
        client.text_generation("Hi", max_new_tokens=0)


def test_async_inference_client(server):
    async def run():
        client = AsyncInferenceClient(server.url)
        sample = {"max_new_tokens": 6, "details": True, "do_sample": True}
        calls = [client.text_generation("Hi", seed=seed, **sample) for seed in range(4)]
        outputs = await asyncio.gather(*calls)
        completion = await client.chat_completion(MESSAGES, max_tokens=5, seed=1)
        stream = await client.chat_completion(MESSAGES, max_tokens=3, stream=True)
        chunks = [chunk async for chunk in stream]
        return outputs, completion, chunks

    outputs, completion, chunks = asyncio.run(run())
    assert [output.details.seed for output in outputs] == [0, 1, 2, 3]
    assert completion.usage.completion_tokens <= 5
    assert len(chunks) == 3


@pytest.mark.slow
def test_real_model_answers_and_follows_the_schema():
    """SmolLM2-135M-Instruct: a plain answer that ends by itself, and schema-valid constrained feedback."""
    with start_server("embedded:smollm2-135m-instruct", threads=1, max_total_tokens=1024) as real:
        body = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 48}
        answer = post(real, "/v1/chat/completions", {**body, "temperature": 0}).json()["choices"][0]
        assert "Paris" in answer["message"]["content"]
        format_ = {"type": "json_schema", "json_schema": {"name": "feedback", "schema": FEEDBACK_SCHEMA}}
        rated = post(real, "/v1/chat/completions", {**body, "max_tokens": 80, "seed": 0, "response_format": format_})
        choice = rated.json()["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert not schema_errors(json.loads(choice["message"]["content"]), FEEDBACK_SCHEMA, {})
