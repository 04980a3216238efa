import math

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

from rlrf_hub.models import prepare_tiny_model
from rlrf_hub.reward import RewardScorer, attach_rewards

PROMPTS = [
    "What is 2 + 2?",
    "Name a prime number larger than ten and explain why it is prime.",
    "Hi",
    "Write one sentence about the sea.",
    "List three colours.",
]
RESPONSES = [
    "4",
    "Eleven is prime because its only divisors are one and itself; no smaller number above one divides it.",
    "Hello! How can I help you today?",
    "The sea is wide.",
    "Red, green and blue.",
]


def _save_reward_model(path, num_labels=1, bare=False):
    source = prepare_tiny_model()
    config = AutoConfig.from_pretrained(source)
    config.num_labels = num_labels
    tokenizer = AutoTokenizer.from_pretrained(source)
    if bare:
        config.pad_token_id = None
        tokenizer.pad_token = None
        tokenizer.chat_template = None
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reward_path(tmp_path_factory):
    return _save_reward_model(tmp_path_factory.mktemp("rm"))


@pytest.fixture(scope="module")
def scorer(reward_path):
    return RewardScorer.from_pretrained(str(reward_path), batch_size=8)


def test_scores_are_finite_floats_that_depend_on_the_response(scorer, reward_path):
    scores = scorer.score(PROMPTS, RESPONSES)
    assert len(scores) == len(PROMPTS)
    assert all(isinstance(s, float) and math.isfinite(s) for s in scores)
    assert len({round(s, 5) for s in scores}) > 1
    assert scorer.model_id == str(reward_path)
    assert scorer.revision is None


def test_chat_template_formats_a_user_and_an_assistant_turn(scorer):
    text = scorer.format("PROMPT-TEXT", "RESPONSE-TEXT")
    assert text.index("PROMPT-TEXT") < text.index("RESPONSE-TEXT")
    assert "<|im_start|>user\nPROMPT-TEXT" in text
    assert "<|im_start|>assistant\nRESPONSE-TEXT" in text


def test_score_does_not_depend_on_the_batch(scorer):
    together = scorer.score(PROMPTS, RESPONSES)
    alone = [scorer.score([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    reversed_order = scorer.score(PROMPTS[::-1], RESPONSES[::-1])[::-1]
    assert together == pytest.approx(alone, abs=1e-4)
    assert together == pytest.approx(reversed_order, abs=1e-4)


def test_missing_pad_token_and_chat_template(tmp_path):
    bare = RewardScorer.from_pretrained(str(_save_reward_model(tmp_path, bare=True)), batch_size=4)
    assert bare.tokenizer.pad_token is not None
    assert bare.model.config.pad_token_id == bare.tokenizer.pad_token_id
    assert bare.format("Q", "A") == "Q\n\nA"
    together = bare.score(PROMPTS, RESPONSES)
    alone = [bare.score([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    assert together == pytest.approx(alone, abs=1e-4)


def test_a_model_with_several_outputs_is_refused(tmp_path):
    path = _save_reward_model(tmp_path, num_labels=2)
    with pytest.raises(ValueError, match="exactly one"):
        RewardScorer.from_pretrained(str(path))


def _rows():
    responses, feedback = [], []
    for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        origin = "candidate" if i % 2 == 0 else "refinement"
        asked = prompt if origin == "candidate" else f"Revise your answer to: {prompt}\nFeedback: too short."
        rid = f"p{i}-i0-{origin[0]}0"
        responses.append(
            {
                "prompt_id": f"p{i}",
                "response_id": rid,
                "origin": origin,
                "prompt": prompt,
                "messages": [{"role": "user", "content": asked}],
                "response": response,
            }
        )
        feedback.append({"prompt_id": f"p{i}", "response_id": rid, "origin": origin, "reward": None})
    return responses, feedback


def test_attach_rewards_scores_every_row_against_the_original_prompt(scorer):
    responses, feedback = _rows()
    scored = attach_rewards(feedback[::-1], responses, scorer)
    assert [row["response_id"] for row in scored] == [row["response_id"] for row in feedback[::-1]]
    assert all(isinstance(row["reward"], float) and math.isfinite(row["reward"]) for row in scored)
    expected = {r["response_id"]: s for r, s in zip(responses, scorer.score(PROMPTS, RESPONSES), strict=True)}
    assert [row["reward"] for row in scored] == pytest.approx([expected[row["response_id"]] for row in scored])
    assert all(row["reward"] is None for row in feedback)


def test_attach_rewards_without_scorer_leaves_rewards_empty():
    responses, feedback = _rows()
    unscored = attach_rewards(feedback, responses, None)
    assert unscored == feedback
    assert all(row["reward"] is None for row in unscored)


def test_attach_rewards_names_a_response_it_cannot_find(scorer):
    responses, feedback = _rows()
    with pytest.raises(KeyError, match="p0-i0-c0"):
        attach_rewards(feedback, responses[1:], scorer)
