"""Choosing each row's next token from a batch of logits, every row with its own parameters and generator.

Order per step: grammar mask, penalties, then (sampling rows only) temperature, top-k, top-p and typical-p,
grouped by identical settings so a batch of alike requests is warped in one call. The reported log-probability of
a token is taken from the distribution it was chosen from, as TGI does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TypicalLogitsWarper

from ..backends.constrained import RowConstraint, mask_constrained
from ..backends.nucleus import top_p_mask
from .protocol import SamplingOptions


@dataclass
class RowState:
    """What the sampler needs to know about one row at this step."""

    options: SamplingOptions
    generator: torch.Generator | None
    constraint: RowConstraint | None
    prompt_ids: list[int]
    generated_ids: list[int]


@dataclass
class Choice:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


def _apply_penalties(scores: torch.Tensor, row: int, state: RowState) -> None:
    options = state.options
    if options.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(state.prompt_ids) | set(state.generated_ids)), dtype=torch.long)
        seen = seen.to(scores.device)
        values = scores[row, seen]
        penalty = options.repetition_penalty
        scores[row, seen] = torch.where(values < 0, values * penalty, values / penalty)
    if (options.frequency_penalty or options.presence_penalty) and state.generated_ids:
        ids = torch.tensor(state.generated_ids, dtype=torch.long, device=scores.device)
        counts = torch.bincount(ids, minlength=scores.shape[-1])[: scores.shape[-1]].to(scores.dtype)
        scores[row] -= options.frequency_penalty * counts + options.presence_penalty * (counts > 0).to(scores.dtype)


def _top_p(input_ids, scores: torch.Tensor, top_p: float) -> torch.Tensor:
    return top_p_mask(scores, top_p)


def _warpers(options: SamplingOptions) -> list:
    warpers = []
    if options.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(options.temperature))
    if options.top_k:
        warpers.append(TopKLogitsWarper(options.top_k))
    if options.top_p < 1.0:
        warpers.append(partial(_top_p, top_p=options.top_p))
    if options.typical_p < 1.0:
        warpers.append(TypicalLogitsWarper(options.typical_p))
    return warpers


def _warp(scores: torch.Tensor, states: Sequence[RowState]) -> torch.Tensor:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for row, state in enumerate(states):
        options = state.options
        if options.do_sample:
            groups[(options.temperature, options.top_k, options.top_p, options.typical_p)].append(row)
    for rows in groups.values():
        warpers = _warpers(states[rows[0]].options)
        if not warpers:
            continue
        index = torch.tensor(rows, device=scores.device)
        sub = scores.index_select(0, index)
        for warper in warpers:
            sub = warper(None, sub)
        scores.index_copy_(0, index, sub)
    return scores


def _draw(probs: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Inverse-CDF sampling: one uniform draw per row from the row's own CPU generator, so a row's draws depend
    neither on the other rows nor on the device."""
    uniforms = torch.cat([torch.rand(1, generator=g) for g in generators])
    cumulative = probs.cumsum(dim=-1)
    targets = uniforms.to(probs.device).unsqueeze(1) * cumulative[:, -1:]
    choices = torch.searchsorted(cumulative, targets, right=True).clamp_(max=probs.shape[-1] - 1)
    drawn_ok = probs.gather(1, choices) > 0
    if not bool(drawn_ok.all()):  # rounding at the top of the CDF landed on a zero-probability token
        choices = torch.where(drawn_ok, choices, probs.argmax(dim=-1, keepdim=True))
    return choices.squeeze(1)


def choose(logits: torch.Tensor, states: Sequence[RowState], eos_token_ids: Sequence[int]) -> list[Choice]:
    """The next token of every row, its log-probability and (when asked for) the row's most likely tokens."""
    scores = logits.float()
    mask_constrained(scores, [state.constraint for state in states], eos_token_ids)
    for row, state in enumerate(states):
        if state.options.has_penalties:
            _apply_penalties(scores, row, state)
    scores = _warp(scores, states)
    if any(state.constraint is not None or state.options.do_sample for state in states):
        dead = scores.amax(dim=-1) == float("-inf")
        if bool(dead.any()):
            scores[dead, eos_token_ids[0]] = 0.0
    logprobs = torch.log_softmax(scores, dim=-1)
    tokens = torch.empty(len(states), dtype=torch.long, device=logprobs.device)
    sampled = [row for row, state in enumerate(states) if state.options.do_sample]
    greedy = [row for row, state in enumerate(states) if not state.options.do_sample]
    if greedy:
        index = torch.tensor(greedy, device=logprobs.device)
        tokens[index] = logprobs.index_select(0, index).argmax(dim=-1)
    if sampled:
        index = torch.tensor(sampled, device=logprobs.device)
        tokens[index] = _draw(logprobs.index_select(0, index).exp(), [states[row].generator for row in sampled])
    chosen = logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
    choices = []
    for row, (token, logprob) in enumerate(zip(tokens.tolist(), chosen, strict=True)):
        top: list[tuple[int, float]] = []
        if states[row].options.top_n_tokens:
            values, ids = logprobs[row].topk(states[row].options.top_n_tokens)
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        choices.append(Choice(token, logprob, top))
    return choices
