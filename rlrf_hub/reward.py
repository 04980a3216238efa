"""The reward stage r(x, y) and the ranking every "by reward" choice uses.

A reward model is any `AutoModelForSequenceClassification` checkpoint with a single output: its logit for
the conversation (user prompt, assistant response) is the reward. Without a reward model, responses are
ranked by their feedback instead (see `ranking_key`).
"""

from __future__ import annotations

import math
import re
from typing import Any

_RESPONSE_ID = re.compile(r"-i(\d+)-([cr])(\d+)$")
_ORIGIN_RANK = {"candidate": 0, "refinement": 1}


class RewardScorer:
    """Scores (prompt, response) pairs with a sequence-classification reward model.

    Each pair is rendered as a two-turn chat with the tokenizer's chat template (plain
    `"prompt\\n\\nresponse"` when the tokenizer has none). Batches are right-padded, so a sequence gets the
    same positions as when scored alone and its score does not depend on the batch it lands in. Over-long
    sequences are truncated from the left: the model reads the end of the response, where it pools.

    Args:
        model: a loaded sequence-classification model with `num_labels == 1`.
        tokenizer: its tokenizer.
        model_id / revision: recorded for lineage (dataset cards).
        batch_size: pairs scored per forward pass.
        max_length: longest tokenized pair; defaults to what the model and tokenizer both accept.
    """

    def __init__(
        self,
        model,
        tokenizer,
        model_id: str,
        revision: str | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
    ):
        if model.config.num_labels != 1:
            raise ValueError(
                f"reward model {model_id} has {model.config.num_labels} outputs; a reward model needs exactly one"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.revision = revision
        self.batch_size = batch_size
        self.max_length = max_length or _max_length(model, tokenizer)
        _ensure_pad_token(model, tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        model_id: str,
        revision: str | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
        dtype: Any = None,
        device: str | None = None,
    ) -> RewardScorer:
        """Load a reward model and its tokenizer from a Hub id or a local folder (float32 unless `dtype`)."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .models import resolve_model

        path = resolve_model(model_id)
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, revision=revision, dtype=dtype or torch.float32
        )
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model.to(device), tokenizer, model_id, revision, batch_size, max_length)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def format(self, prompt: str, response: str) -> str:
        if self.has_chat_template:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return f"{prompt}\n\n{response}"

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """One float per (prompt, response) pair, in input order."""
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        texts = [self.format(p, r) for p, r in zip(prompts, responses, strict=True)]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        scores: list[float] = [0.0] * len(texts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            for index, value in zip(batch, self._score_batch([texts[i] for i in batch]), strict=True):
                scores[index] = value
        return scores

    def _score_batch(self, texts: list[str]) -> list[float]:
        import torch

        encoded = self.tokenizer(
            texts,
            add_special_tokens=not self.has_chat_template,
            padding=True,
            padding_side="right",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        encoded = {k: v.to(self.model.device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            logits = self.model(**encoded).logits
        return [float(v) for v in logits[:, 0].float().cpu()]


def _ensure_pad_token(model, tokenizer) -> None:
    """Give tokenizer and model one pad token: the model pools at the last token that is not padding."""
    config_pad = model.config.pad_token_id
    if tokenizer.pad_token_id is None:
        if config_pad is not None:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(config_pad)
        elif tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            model.resize_token_embeddings(len(tokenizer))
    if config_pad is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.truncation_side = "left"


def _max_length(model, tokenizer) -> int:
    limits = [tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None)]
    limits = [int(v) for v in limits if v and v < 10**9]
    return min(limits) if limits else 4096


def attach_rewards(feedback: list[dict], responses: list[dict], scorer: RewardScorer | None) -> list[dict]:
    """Feedback rows with `reward` = r(x, y), x the original prompt (never a reflection prompt).

    Without a scorer the rows come back as copies, `reward` left as it was (None).
    """
    if scorer is None:
        return [dict(row) for row in feedback]
    by_id = {row["response_id"]: row for row in responses}
    missing = sorted({row["response_id"] for row in feedback} - by_id.keys())
    if missing:
        raise KeyError(f"no response rows for feedback on {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    matched = [by_id[row["response_id"]] for row in feedback]
    rewards = scorer.score([r["prompt"] for r in matched], [r["response"] for r in matched])
    return [{**row, "reward": float(reward)} for row, reward in zip(feedback, rewards, strict=True)]


def _reward(row: dict) -> float | None:
    value = row.get("reward")
    if value is None or math.isnan(value):
        return None
    return float(value)


def response_order(row: dict) -> tuple[int, int, int]:
    """(iteration, origin rank, sample index) of a response: candidates before refinements, then by index.

    Read from the response id (`<prompt_id>-i<iteration>-<c|r><index>`), else from the row's columns.
    """
    match = _RESPONSE_ID.search(row.get("response_id") or "")
    if match:
        return int(match[1]), 0 if match[2] == "c" else 1, int(match[3])
    origin = _ORIGIN_RANK.get(row.get("origin"), len(_ORIGIN_RANK))
    return int(row.get("iteration") or 0), origin, int(row.get("sample_index") or 0)


def _earlier_first(row: dict) -> tuple:
    """Larger for earlier responses; the response id itself settles what the order leaves tied."""
    iteration, origin, index = response_order(row)
    inverted_id = tuple(-ord(c) for c in row.get("response_id") or "") + (1,)
    return -iteration, -origin, -index, inverted_id


def ranking_key(row: dict) -> tuple:
    """Sort key of a feedback row: a larger key ranks higher (`max(rows, key=ranking_key)` is the best).

    The rule, in order:
      1. a row whose feedback parsed ranks above every row whose parse failed;
      2. the reward, when the row has one (rows with a reward above rows without);
      3. the mean rating (failed parses have none);
      4. more aspects rated 1;
      5. fewer aspects rated -1;
      6. the earlier response: candidates before refinements, then the lower sample index (read from the
         response id), the response id itself as last resort, so the order never depends on row order.
    Without a reward model step 2 ties everywhere and the feedback decides.
    """
    parsed = row.get("parse_status") != "failed" and row.get("mean_rating") is not None
    reward = _reward(row)
    mean = row.get("mean_rating")
    ratings = row.get("ratings") or []
    return (
        int(parsed),
        int(reward is not None),
        reward if reward is not None else 0.0,
        float(mean) if parsed else -math.inf,
        sum(1 for r in ratings if r == 1) if parsed else 0,
        -sum(1 for r in ratings if r == -1) if parsed else 0,
        *_earlier_first(row),
    )


def reward_key(row: dict) -> tuple:
    """Sort key by reward alone (feedback ignored), ties to the earlier response; rows need a reward."""
    reward = _reward(row)
    if reward is None:
        raise ValueError(f"response {row.get('response_id')} has no reward")
    return (reward, *_earlier_first(row))
