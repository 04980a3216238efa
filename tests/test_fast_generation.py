"""The packed decoder and the nucleus sampler: same numbers as transformers, without its costs."""

import json
from copy import deepcopy

import pytest
import torch
from conftest import half_rounded
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from rlrf_hub.backends import GenerationRequest, SamplingParams
from rlrf_hub.backends.nucleus import SeededNucleusSampler, nucleus, top_p_mask
from rlrf_hub.backends.packed_decode import PackedDecoder, generate_tokens, prefix_tree, supports
from rlrf_hub.backends.projections import HalfWeightLinear, use_half_weights, weight_versions
from rlrf_hub.backends.transformers_backend import TransformersBackend
from rlrf_hub.models import load_causal_lm, load_tokenizer


@pytest.fixture(scope="module")
def backend(tiny_model):
    model = load_causal_lm(tiny_model)
    return TransformersBackend(model, load_tokenizer(tiny_model), model_id=tiny_model, batch_size=4)


@pytest.fixture(scope="module", params=["float32", "float16"])
def decoder_and_reference(request, backend):
    """A packed decoder and the model its logits must equal: the model itself, or its half-rounded copy."""
    if request.param == "float32":
        return PackedDecoder(backend.model, "float32"), backend.model
    return PackedDecoder(backend.model, "float16"), half_rounded(backend.model)


def prompts_for(backend, texts):
    return backend.encode_prompts([[{"role": "user", "content": text}] for text in texts])


def greedy(logits, rows):
    return logits.argmax(dim=-1).tolist()


def test_the_tiny_llama_takes_the_packed_path(backend):
    assert supports(backend.model)
    assert backend._decoder is not None


def test_prefill_logits_match_a_plain_forward_pass_with_shared_and_repeated_prompts(backend, decoder_and_reference):
    prompts = prompts_for(backend, ["two plus two", "name a colour please", "two plus two"])
    decoder, reference = decoder_and_reference
    with torch.inference_mode():
        cache, logits = decoder.prefill(prompts, capacity=max(map(len, prompts)) + 4)
        for row, ids in enumerate(prompts):
            expected = reference(torch.tensor([ids])).logits[0, -1]
            torch.testing.assert_close(logits[row], expected, rtol=1e-4, atol=1e-4)
            assert int(cache.lengths[row]) == len(ids)


def test_prefill_computes_shared_prefixes_once_at_every_depth_and_matches_a_forward_pass(
    backend, decoder_and_reference
):
    """A judge's prompts share a rubric, then a question, then diverge; one prompt ends inside another."""
    base = prompts_for(backend, ["passages about one entity come first, then the statement to check"])[0]
    prompts = [
        base + [11, 12, 13],
        base + [11, 12, 14, 15],
        base + [11, 16],
        base[:-3],
        base + [11, 12, 13],
        [7, 8, 9],
    ]
    segments, ends = prefix_tree(list(dict.fromkeys(map(tuple, prompts))))
    assert sum(len(segment.tokens) for segment in segments) == len(base) + 9
    assert all(segment.parent < index for index, segment in enumerate(segments))
    decoder, reference = decoder_and_reference
    with torch.inference_mode():
        cache, logits = decoder.prefill(prompts, capacity=max(map(len, prompts)) + 2)
        following = torch.tensor([21 + row for row in range(len(prompts))])
        stepped = decoder.step(cache, following, torch.arange(len(prompts)))
        for row, ids in enumerate(prompts):
            expected = reference(torch.tensor([ids + [21 + row]])).logits[0]
            torch.testing.assert_close(logits[row], expected[-2], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(stepped[row], expected[-1], rtol=1e-4, atol=1e-4)


def test_decode_steps_match_a_plain_forward_pass_while_rows_drop_out(backend, decoder_and_reference):
    prompts = prompts_for(backend, ["count to three", "say hello", "what is rain"])
    decoder, reference = decoder_and_reference
    with torch.inference_mode():
        cache, logits = decoder.prefill(prompts, capacity=max(map(len, prompts)) + 4)
        first = logits.argmax(dim=-1)
        decoder.step(cache, first, torch.arange(3))
        second_rows = torch.tensor([0, 2])  # row 1 has finished
        second = torch.tensor([5, 7])
        stepped = decoder.step(cache, second, second_rows)
        for position, row in enumerate(second_rows.tolist()):
            ids = prompts[row] + [int(first[row]), int(second[position])]
            expected = reference(torch.tensor([ids])).logits[0, -1]
            torch.testing.assert_close(stepped[position], expected, rtol=1e-4, atol=1e-4)
    assert cache.lengths.tolist() == [len(prompts[0]) + 2, len(prompts[1]) + 1, len(prompts[2]) + 2]


def test_greedy_tokens_equal_generate(backend, decoder_and_reference):
    prompts = prompts_for(backend, ["a short one", "a rather longer prompt than the first one", "mid size"])
    decoder, reference = decoder_and_reference
    ours = generate_tokens(decoder, prompts, 12, greedy, eos=set())
    input_ids, attention_mask = backend.left_pad(prompts)
    with torch.inference_mode():
        output = reference.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=12, do_sample=False, eos_token_id=None
        )
    assert ours == output[:, input_ids.shape[1] :].tolist()


def test_half_precision_weights_are_rebuilt_when_the_model_changes_in_place(tiny_model):
    """A training step between two calls must not leave the decoder sampling from the old weights."""
    model = load_causal_lm(tiny_model)
    backend = TransformersBackend(model, load_tokenizer(tiny_model), model_id=tiny_model)
    prompts = prompts_for(backend, ["what changed", "nothing at all"])
    decoder = PackedDecoder(model, "float16")
    capacity = max(map(len, prompts)) + 1
    with torch.inference_mode():
        _, before = decoder.prefill(prompts, capacity)
        built = decoder.projections
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
        model.lm_head.weight.add_(0.01)
    assert weight_versions(model) != built.versions
    with torch.inference_mode():
        _, after = decoder.prefill(prompts, capacity)
        assert decoder.projections is not built
        reference = half_rounded(model)
        for row, ids in enumerate(prompts):
            torch.testing.assert_close(after[row], reference(torch.tensor([ids])).logits[0, -1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(before, after, atol=1e-3)


def test_half_weight_linears_compute_what_the_half_rounded_model_computes(tiny_model):
    """The server's path: the model's own forward pass, its `nn.Linear`s swapped for `HalfWeightLinear`s."""
    model = load_causal_lm(tiny_model)
    swapped = deepcopy(model)
    linears = sum(type(module) is torch.nn.Linear for module in model.modules())
    assert use_half_weights(swapped) == linears > 0
    assert not any(type(module) is torch.nn.Linear for module in swapped.modules())
    assert swapped.lm_head.weight is swapped.model.embed_tokens.weight
    assert swapped.state_dict().keys() == model.state_dict().keys()
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.inference_mode():
        half = swapped(ids).logits
        torch.testing.assert_close(half, half_rounded(model)(ids).logits, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(half, model(ids).logits, rtol=0, atol=1e-6)
    # With gradients on (training) it is a plain nn.Linear on the fp32 weights.
    torch.testing.assert_close(swapped(ids).logits, model(ids).logits)
    with torch.no_grad():
        swapped.model.layers[0].mlp.down_proj.weight.mul_(3.0)
        model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    with torch.inference_mode():
        torch.testing.assert_close(swapped(ids).logits, half_rounded(model)(ids).logits, rtol=1e-4, atol=1e-4)


def test_lora_layers_wrap_half_weight_linears(tiny_model):
    from peft import LoraConfig, get_peft_model

    def with_lora(model):
        torch.manual_seed(0)
        config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        return get_peft_model(model, config).eval()

    model = load_causal_lm(tiny_model)
    reference = with_lora(half_rounded(model))
    swapped = deepcopy(model)
    use_half_weights(swapped)
    tuned = with_lora(swapped)
    assert isinstance(tuned.base_model.model.model.layers[0].self_attn.q_proj.base_layer, HalfWeightLinear)
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.inference_mode():
        logits = tuned(ids).logits
        torch.testing.assert_close(logits, reference(ids).logits, rtol=1e-4, atol=1e-4)
        with tuned.disable_adapter():
            assert not torch.allclose(tuned(ids).logits, logits, rtol=0, atol=1e-4)


def test_half_precision_weights_keep_the_real_models_next_token_distribution(data_dir):
    """SmolLM2-135M teacher-forced through GSM8K answers by decode steps: fp16 weights against fp32 ones."""
    name = "embedded:smollm2-135m-instruct"
    model, tokenizer = load_causal_lm(name), load_tokenizer(name)
    backend = TransformersBackend(model, tokenizer, model_id=name, weight_precision="float32")
    with open(data_dir / "gsm8k/test.jsonl", encoding="utf-8") as f:
        items = [json.loads(line) for line, _ in zip(f, range(4), strict=False)]
    prompts = prompts_for(backend, [item["question"] for item in items])
    answers = [tokenizer(item["answer"], add_special_tokens=False)["input_ids"][:40] for item in items]
    steps = min(map(len, answers))
    rows = torch.arange(len(prompts))
    distributions = {}
    for precision in ("float32", "float16"):
        decoder = PackedDecoder(model, precision)
        with torch.inference_mode():
            cache, logits = decoder.prefill(prompts, max(map(len, prompts)) + steps)
            collected = [logits]
            for step in range(steps - 1):
                collected.append(decoder.step(cache, torch.tensor([a[step] for a in answers]), rows))
        distributions[precision] = torch.log_softmax(torch.cat(collected), dim=-1)
    exact, half = distributions["float32"], distributions["float16"]
    kl = (exact.exp() * (exact - half)).sum(dim=-1)
    assert float(kl.mean()) < 1e-4
    assert float((exact.argmax(-1) == half.argmax(-1)).double().mean()) >= 0.98


def test_rows_stop_at_their_eos_and_others_go_on(backend):
    prompts = prompts_for(backend, ["one", "two"])
    decoder = PackedDecoder(backend.model)
    free = generate_tokens(decoder, prompts, 8, greedy, eos=set())
    stop = free[0][2]
    stopped = generate_tokens(decoder, prompts, 8, greedy, eos={stop})
    assert stopped[0] == free[0][: free[0].index(stop) + 1]
    expected_second = free[1][: free[1].index(stop) + 1] if stop in free[1] else free[1]
    assert stopped[1] == expected_second


def test_finished_rows_leave_the_cache_and_the_others_decode_unchanged(backend):
    prompts = prompts_for(backend, ["one", "two", "three and a few more words", "four"])
    decoder = PackedDecoder(backend.model)
    free = generate_tokens(decoder, prompts, 10, greedy, eos=set())
    ends = {0: 2, 2: 4, 3: 4}  # row -> the step at which it draws EOS
    end_token, asked, cache_rows = -1, [], []

    def choose(logits, rows):
        asked.append(list(rows))
        drawn = zip(rows, greedy(logits, rows), strict=True)
        return [end_token if ends.get(row) == len(asked) - 1 else token for row, token in drawn]

    decode_step = decoder.step

    def step(cache, tokens, rows):
        cache_rows.append(len(cache.lengths))
        return decode_step(cache, tokens, rows)

    decoder.step = step
    ended = generate_tokens(decoder, prompts, 10, choose, eos={end_token})
    assert ended[1] == free[1]
    for row, at in ends.items():
        assert ended[row] == [*free[row][:at], end_token]
    # Three rows going keep all four cache rows; one row going keeps one, and `choose` still sees its prompt index.
    assert cache_rows == [4, 4, 4, 4, 1, 1, 1, 1, 1]
    assert asked[5:] == [[1]] * 5


RATING_SCHEMA = {
    "type": "object",
    "properties": {"rating": {"enum": [-1, 0, 1]}, "critique": {"type": "string", "maxLength": 40}},
    "required": ["rating", "critique"],
}


def test_constrained_rows_take_the_packed_path_and_decode_as_generate_does(backend):
    def chat(text):
        return [{"role": "user", "content": text}]

    requests = [
        GenerationRequest(chat("Rate this answer, please."), json_schema=RATING_SCHEMA),
        GenerationRequest(chat("Write freely.")),
        GenerationRequest(chat("Rate it."), json_schema=RATING_SCHEMA),
    ]
    params = SamplingParams(max_new_tokens=40, do_sample=False)
    packed = backend.generate(requests, params)
    unpacked = TransformersBackend(backend.model, backend.tokenizer, backend.model_id, batch_size=4, packed=False)
    assert unpacked._decoder is None
    with_generate = unpacked.generate(requests, params)
    assert [g[0].text for g in packed] == [g[0].text for g in with_generate]
    for generations in (packed[0], packed[2]):
        assert generations[0].finish_reason == "stop"
        assert set(json.loads(generations[0].text)) == {"rating", "critique"}
    assert packed[1][0].finish_reason == "length"


def test_sampled_rows_do_not_depend_on_batch_company(backend):
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3)
    alone = backend.generate([GenerationRequest([{"role": "user", "content": "tell a story"}], n=2)], params)
    crowd = backend.generate(
        [
            GenerationRequest([{"role": "user", "content": "something else entirely"}], n=3),
            GenerationRequest([{"role": "user", "content": "tell a story"}], n=2),
        ],
        params,
    )
    assert [g.text for g in crowd[1]] == [g.text for g in alone[0]]
    assert alone[0][0].text != alone[0][1].text


def test_top_p_keeps_what_transformers_keeps():
    torch.manual_seed(0)
    for sharpness in (3.0, 8.0, 20.0):
        scores = torch.randn(6, 5000) * sharpness
        ours = top_p_mask(scores.clone(), 0.9) > float("-inf")
        theirs = TopPLogitsWarper(0.9)(None, scores.clone()) > float("-inf")
        assert torch.equal(ours, theirs)


def test_the_window_widens_until_every_nucleus_fits():
    probs = torch.full((2, 1000), 1 / 1000)
    indices, kept = nucleus(probs, 0.5)
    assert indices.shape[1] >= 500 and int(kept[0].sum()) == 500


def test_the_seeded_draw_follows_the_warped_distribution():
    """One row drawn many times (fresh seeds) lands on tokens in proportion to transformers' warped softmax."""
    scores = torch.tensor([[2.0, 1.5, 1.0, 0.0, -1.0, -3.0]])
    warped = TopPLogitsWarper(0.8)(None, TemperatureLogitsWarper(0.7)(None, scores.clone()))
    expected = torch.softmax(warped, dim=-1)[0]
    draws = 4000
    sampler = SeededNucleusSampler(range(draws), temperature=0.7, top_p=0.8)
    chosen = sampler.choose(scores.expand(draws, -1).clone(), list(range(draws)))
    observed = torch.bincount(torch.tensor(chosen), minlength=6).double() / draws
    assert observed[expected == 0].sum() == 0
    assert torch.allclose(observed, expected.double(), atol=0.03)


def test_a_row_draw_depends_on_its_own_seed_only():
    scores = torch.randn(3, 300)
    together = SeededNucleusSampler([11, 12, 13], temperature=1.0, top_p=0.95).choose(scores.clone(), [0, 1, 2])
    alone = SeededNucleusSampler([12], temperature=1.0, top_p=0.95).choose(scores[1:2].clone(), [0])
    assert together[1] == alone[0]
