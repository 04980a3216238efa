"""Request parsing, grammar compilation and metrics of `rlrf-hub serve`, without a model."""

import argparse
import json

import llguidance
import pytest

from rlrf_hub.backends.projections import default_precision
from rlrf_hub.serving.adapters import parse_adapter_spec
from rlrf_hub.serving.cli import add_parser, config_from_args
from rlrf_hub.serving.constraints import compile_grammar
from rlrf_hub.serving.errors import ValidationError
from rlrf_hub.serving.metrics import ServerMetrics
from rlrf_hub.serving.protocol import Grammar, parse_chat, parse_generate, parse_grammar
from rlrf_hub.serving.service import ServeConfig, resolve_weight_precision

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def test_generate_defaults_follow_tgi():
    request = parse_generate({"inputs": "Hi"}, stream=False)
    assert request.options.do_sample is False and request.options.max_new_tokens is None
    assert request.details is False and request.best_of == 1 and request.grammar is None
    # A warper switches sampling on, as in TGI.
    assert parse_generate({"inputs": "Hi", "parameters": {"top_p": 0.9}}, stream=False).options.do_sample
    assert parse_generate({"inputs": "Hi", "parameters": {"temperature": 0.7}}, stream=False).options.do_sample


def test_compat_route_reads_stream_from_the_body():
    assert parse_generate({"inputs": "Hi", "stream": True}).stream is True
    assert parse_generate({"inputs": "Hi"}).stream is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"inputs": ""}, "`inputs`"),
        ({"inputs": 3}, "`inputs`"),
        ({"inputs": "x", "parameters": {"temperature": 0}}, "`temperature`"),
        ({"inputs": "x", "parameters": {"top_p": 1.5}}, "`top_p`"),
        ({"inputs": "x", "parameters": {"top_k": 0}}, "`top_k`"),
        ({"inputs": "x", "parameters": {"max_new_tokens": 0}}, "`max_new_tokens`"),
        ({"inputs": "x", "parameters": {"max_new_tokens": "5"}}, "`max_new_tokens`"),
        ({"inputs": "x", "parameters": {"seed": -1}}, "`seed`"),
        ({"inputs": "x", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}, "`stop`"),
        ({"inputs": "x", "parameters": {"do_sample": "yes"}}, "`do_sample`"),
        ({"inputs": "x", "parameters": {"best_of": 2}}, "sampling"),
        ({"inputs": "x", "parameters": {"best_of": 2, "do_sample": True, "seed": 1}}, "`seed`"),
        ({"inputs": "x", "parameters": {"grammar": {"type": "yaml", "value": "a"}}}, "`grammar.type`"),
        ({"inputs": "x", "parameters": {"grammar": {"type": "json"}}}, "`grammar.value`"),
        ({"inputs": "x", "parameters": {"watermark": True}}, "`watermark`"),
        ({"inputs": "x", "parameters": {"top_n_tokens": 9}}, "`top_n_tokens`"),
    ],
)
def test_generate_validation_names_the_field(body, field):
    with pytest.raises(ValidationError) as info:
        parse_generate(body, stream=False)
    assert field in info.value.message
    assert info.value.body()["error_type"] == "validation" and info.value.status == 422


def test_best_of_cannot_stream():
    body = {"inputs": "x", "parameters": {"best_of": 2, "do_sample": True}}
    assert parse_generate(body, stream=False).best_of == 2
    with pytest.raises(ValidationError, match="best_of"):
        parse_generate(body, stream=True)


def test_chat_sampling_follows_openai():
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    request = parse_chat({"messages": messages, "max_tokens": 5, "stop": "x", "stream": True})
    assert request.messages == [{"role": "user", "content": "ab"}]
    assert request.options.do_sample and request.options.stop == ("x",) and request.options.max_new_tokens == 5
    assert not parse_chat({"messages": messages, "temperature": 0}).options.do_sample
    request = parse_chat({"messages": messages, "logprobs": True, "top_logprobs": 2, "n": 3})
    assert request.options.top_n_tokens == 2 and request.n == 3
    for body, field in [
        ({"messages": []}, "`messages`"),
        ({"messages": [{"content": "x"}]}, "`messages[0].role`"),
        ({"messages": messages, "tools": [{"type": "function"}]}, "`tools`"),
        ({"messages": messages, "n": 0}, "`n`"),
        ({"messages": messages, "temperature": -1}, "`temperature`"),
    ]:
        with pytest.raises(ValidationError, match=field.replace("[", r"\[").replace("]", r"\]")):
            parse_chat(body)


@pytest.mark.parametrize(
    "value",
    [
        {"type": "json", "value": SCHEMA},
        {"type": "json", "value": json.dumps(SCHEMA)},
        {"type": "json_object", "value": SCHEMA},
        {"type": "json_schema", "value": {"name": "x", "schema": SCHEMA}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}},
    ],
)
def test_every_json_grammar_spelling_means_the_same_schema(value):
    assert parse_grammar(value, "response_format") == Grammar("json", SCHEMA)


def test_other_grammars():
    assert parse_grammar({"type": "text"}, "response_format") is None
    assert parse_grammar({"type": "json_object"}, "response_format") == Grammar("json", {"type": "object"})
    assert parse_grammar({"type": "regex", "value": "[ab]+"}, "grammar") == Grammar("regex", "[ab]+")


def test_grammars_compile_or_fail_with_422():
    for grammar in (Grammar("json", SCHEMA), Grammar("regex", "(yes|no)[0-9]{2}")):
        text = compile_grammar(grammar)
        assert llguidance.LLMatcher.validate_grammar(text) == ""
    with pytest.raises(ValidationError, match="grammar"):
        compile_grammar(Grammar("regex", "(unclosed"))
    with pytest.raises(ValidationError, match="grammar"):
        compile_grammar(Grammar("json", {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}))


def test_adapter_specs(tmp_path):
    assert parse_adapter_spec("user/lora@v2").location == "user/lora"
    assert parse_adapter_spec("user/lora@v2").revision == "v2"
    assert parse_adapter_spec("user/lora").revision is None
    folder = tmp_path / "lora@odd"
    folder.mkdir()
    assert parse_adapter_spec(str(folder)).location == str(folder)
    with pytest.raises(ValueError):
        parse_adapter_spec("user/lora@")


def test_metrics_text_format():
    metrics = ServerMetrics()
    metrics.request_count.inc()
    metrics.request_failure.inc(err="validation")
    metrics.batch_decode_size.observe(3)
    metrics.batch_decode_size.observe(1)
    text = metrics.render()
    assert "# TYPE tgi_request_count counter\ntgi_request_count 1\n" in text
    assert 'tgi_request_failure{err="validation"} 1' in text
    assert 'tgi_batch_decode_size_bucket{le="1"} 1\n' in text
    assert 'tgi_batch_decode_size_bucket{le="4"} 2\n' in text
    assert 'tgi_batch_decode_size_bucket{le="+Inf"} 2\n' in text
    assert "tgi_batch_decode_size_sum 4\ntgi_batch_decode_size_count 2\n" in text


def test_serve_subcommand_arguments():
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    add_parser(commands)
    args = parser.parse_args(
        ["serve", "--model", "embedded:tiny", "--adapter", "a/b@v1", "--adapter", "c/d", "--port", "0"]
        + ["--max-batch-size", "4", "--max-queue", "2", "--max-total-tokens", "256"]
    )
    config = config_from_args(args)
    assert args.handler.__name__ == "serve"
    assert config.adapters == ("a/b@v1", "c/d") and config.max_batch_size == 4 and config.max_queue == 2
    assert config.max_total_tokens == 256 and config.max_input_tokens is None
    assert config.weight_precision is None
    precise = config_from_args(parser.parse_args(["serve", "--model", "m", "--weight-precision", "float32"]))
    assert precise.weight_precision == "float32"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--model", "m", "--weight-precision", "int8"])


def test_weight_precision_is_checked_and_resolved_per_device():
    with pytest.raises(ValueError, match="weight_precision"):
        ServeConfig(model="m", weight_precision="int8")
    assert resolve_weight_precision(ServeConfig(model="m"), "cpu") == default_precision()
    assert resolve_weight_precision(ServeConfig(model="m"), "cuda") == "float32"
    with pytest.raises(ValueError, match="for CPU serving"):
        resolve_weight_precision(ServeConfig(model="m", weight_precision="float16"), "cuda")
