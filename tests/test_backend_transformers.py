import json

import pytest

from rlrf_hub.backends import GenerationRequest, SamplingParams
from rlrf_hub.backends.constrained import close_objects
from rlrf_hub.backends.transformers_backend import TransformersBackend
from rlrf_hub.models import EMBEDDED_MODEL, load_causal_lm, load_tokenizer

RATING_SCHEMA = {
    "type": "object",
    "properties": {
        "rating": {"enum": [-1, 0, 1]},
        "critique": {"type": "string", "maxLength": 30},
    },
    "required": ["rating", "critique"],
}
SCORES_SCHEMA = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0, "maximum": 9},
    "minItems": 1,
    "maxItems": 3,
}


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assert_rating(text: str) -> None:
    value = json.loads(text)
    assert set(value) == {"rating", "critique"}
    assert value["rating"] in (-1, 0, 1) and not isinstance(value["rating"], bool)
    assert isinstance(value["critique"], str) and len(value["critique"]) <= 30


def assert_scores(text: str) -> None:
    value = json.loads(text)
    assert isinstance(value, list) and 1 <= len(value) <= 3
    assert all(isinstance(item, int) and 0 <= item <= 9 for item in value)


@pytest.fixture(scope="module")
def backend(tiny_model):
    model = load_causal_lm(tiny_model)
    return TransformersBackend(model, load_tokenizer(tiny_model), model_id="embedded:tiny", batch_size=3)


def texts(results):
    return [[generation.text for generation in generations] for generations in results]


def test_n_generations_come_back_in_request_order(backend):
    # Prompts of very different lengths are reordered for batching; a `const` schema tags each output.
    requests = [
        GenerationRequest(chat("short"), n=2, json_schema={"const": "first"}),
        GenerationRequest(chat("a much longer prompt " * 12), n=1, json_schema={"const": "second"}),
        GenerationRequest(chat("medium length prompt " * 4), n=3, json_schema={"const": "third"}),
    ]
    results = backend.generate(requests, SamplingParams(max_new_tokens=8))
    assert [[json.loads(text) for text in group] for group in texts(results)] == [
        ["first"] * 2,
        ["second"],
        ["third"] * 3,
    ]
    assert all(g.finish_reason == "stop" for group in results for g in group)


def test_sampling_is_seeded(backend):
    requests = [GenerationRequest(chat("Say something."), n=2), GenerationRequest(chat("Another one " * 5))]
    params = SamplingParams(max_new_tokens=6, seed=3)
    first = texts(backend.generate(requests, params))
    assert texts(backend.generate(requests, params)) == first
    assert first[0][0] != first[0][1]
    other = texts(backend.generate(requests, SamplingParams(max_new_tokens=6, seed=4)))
    assert other != first


def test_a_request_does_not_depend_on_its_neighbours(backend):
    params = SamplingParams(max_new_tokens=6, seed=11)
    target = GenerationRequest(chat("What is two plus two?"), n=2)
    alone = texts(backend.generate([target], params))[0]
    crowd = [GenerationRequest(chat("filler " * k)) for k in (1, 9, 20)]
    mixed = texts(backend.generate([crowd[0], target, crowd[1], crowd[2]], params))
    assert mixed[1] == alone
    twice = texts(backend.generate([target, target], params))
    assert twice[0] == alone and twice[1] != alone


def test_running_out_of_tokens_is_a_length_finish(backend):
    results = backend.generate([GenerationRequest(chat("Tell me a story."), n=3)], SamplingParams(max_new_tokens=5))
    for generation in results[0]:
        assert generation.finish_reason == "length"
        assert generation.num_tokens == 5


def test_num_tokens_excludes_padding_and_counts_eos(backend):
    short = GenerationRequest(chat("Answer yes."), json_schema={"const": "yes"})
    params = SamplingParams(max_new_tokens=12)
    alone = backend.generate([short], params)[0][0]
    before = backend.total_tokens
    results = backend.generate([short, GenerationRequest(chat("Ramble on."))], params)
    padded, long = results[0][0], results[1][0]
    assert (padded.text, padded.finish_reason) == ('"yes"', "stop")
    assert padded.num_tokens == alone.num_tokens
    assert 2 <= padded.num_tokens < 12
    assert (long.finish_reason, long.num_tokens) == ("length", 12)
    assert backend.total_tokens - before == padded.num_tokens + long.num_tokens


def test_schema_rows_parse_and_validate_even_from_a_random_model(backend):
    requests = [
        GenerationRequest(chat("Rate this answer: 4."), n=3, json_schema=RATING_SCHEMA),
        GenerationRequest(chat("Write freely.")),
        GenerationRequest(chat("List some digits."), n=2, json_schema=SCORES_SCHEMA),
        GenerationRequest(chat("Rate again, please, with a longer prompt this time."), n=2, json_schema=RATING_SCHEMA),
    ]
    results = backend.generate(requests, SamplingParams(max_new_tokens=64, temperature=1.0, top_p=1.0, seed=5))
    for generation in results[0] + results[3]:
        assert generation.finish_reason == "stop"
        assert_rating(generation.text)
    for generation in results[2]:
        assert_scores(generation.text)
    assert results[1][0].finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(results[1][0].text)


def test_greedy_constrained_decoding(backend):
    results = backend.generate(
        [GenerationRequest(chat("Rate it."), n=2, json_schema=RATING_SCHEMA)],
        SamplingParams(max_new_tokens=64, do_sample=False),
    )
    assert results[0][0].text == results[0][1].text
    assert_rating(results[0][0].text)


def test_count_prompt_tokens_matches_the_chat_template(backend):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How many legs has a cat?"}]
    encoded = backend.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert backend.count_prompt_tokens(messages) == len(encoded["input_ids"])
    assert backend.count_prompt_tokens(chat("one two three four five")) > backend.count_prompt_tokens(chat("one"))


def test_close_objects_forbids_extra_keys_without_touching_data():
    schema = {
        "type": "object",
        "properties": {
            "inner": {"type": "object", "properties": {"x": {"type": "integer"}}},
            "open": {"type": "object", "properties": {}, "additionalProperties": True},
            "choice": {"enum": [{"properties": 1}]},
        },
        "$defs": {"item": {"type": "object", "properties": {"y": {"type": "string"}}}},
    }
    closed = close_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["inner"]["additionalProperties"] is False
    assert closed["properties"]["open"]["additionalProperties"] is True
    assert closed["properties"]["choice"] == {"enum": [{"properties": 1}]}
    assert closed["$defs"]["item"]["additionalProperties"] is False
    assert "additionalProperties" not in schema


@pytest.mark.slow
def test_real_model_writes_schema_valid_feedback():
    backend = TransformersBackend.from_pretrained(EMBEDDED_MODEL, batch_size=4, device="cpu")
    schema = {
        "type": "object",
        "properties": {
            "rating": {"enum": [-1, 0, 1]},
            "critique": {"type": "string", "maxLength": 30},
        },
        "required": ["rating", "critique"],
    }
    answers = ["2 + 2 = 5", "Paris is the capital of France.", "The sun orbits the earth.", "7 is a prime number."]
    requests = [
        GenerationRequest(
            chat(f"Rate this answer as -1 (wrong), 0 or 1 (right), with a short critique, in JSON.\n\n{answer}"),
            json_schema=schema,
        )
        for answer in answers
    ]
    results = backend.generate(requests, SamplingParams(max_new_tokens=64, seed=0))
    for (generation,) in results:
        assert generation.finish_reason == "stop"
        assert_rating(generation.text)
