"""Per-row grammar constraints with llguidance: JSON schemas (through `backends.constrained`) and regular expressions.

Unlike `JSONSchemaLogitsProcessor`, which lives for one `generate` call over a fixed batch, a `RowConstraint` belongs
to one sequence: rows join and leave the running batch, and each step masks whichever rows are constrained now.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import llguidance
import llguidance.torch
import torch

from ..backends.constrained import llguidance_tokenizer, schema_grammar, unpack_bitmask
from .errors import ValidationError
from .protocol import Grammar

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=256)
def _regex_grammar(pattern: str) -> str:
    grammar = llguidance.LLMatcher.grammar_from_regex(pattern)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ValueError(messages[0].split("\n", 1)[0] if messages else "invalid regular expression")
    return grammar


def compile_grammar(grammar: Grammar) -> str:
    """The llguidance grammar text of a request's grammar; a 422 when it cannot be compiled."""
    try:
        if grammar.kind == "regex":
            return _regex_grammar(grammar.value)
        schema = grammar.value
        if schema is False:
            raise ValueError("the schema `false` accepts nothing")
        return schema_grammar({} if schema is True else schema)
    except (ValueError, RuntimeError, TypeError) as err:
        raise ValidationError(f"grammar cannot be compiled: {str(err).splitlines()[0] if str(err) else err}") from None


class RowConstraint:
    """One sequence's matcher: told each sampled token, asked which tokens may come next."""

    def __init__(self, ll_tokenizer: llguidance.LLTokenizer, grammar_text: str):
        self.matcher = llguidance.LLMatcher(ll_tokenizer, grammar_text, log_level=0)
        self.vocab_size = ll_tokenizer.vocab_size
        if self.matcher.is_error():
            raise ValidationError(f"grammar cannot be used: {self.matcher.get_error().splitlines()[0]}")
        self.failed = False

    def consume(self, token: int) -> None:
        if not self.failed and not self.matcher.consume_token(token):
            logger.warning("constrained row left its grammar: %s", self.matcher.get_error().split("\n", 1)[0])
            self.failed = True

    @property
    def eos_only(self) -> bool:
        return self.failed or self.matcher.is_stopped() or self.matcher.is_error()


def make_constraint(tokenizer, eos_token_ids: Sequence[int], grammar_text: str) -> RowConstraint:
    return RowConstraint(llguidance_tokenizer(tokenizer, eos_token_ids), grammar_text)


_EXECUTOR: llguidance.LLExecutor | None = None


def _executor() -> llguidance.LLExecutor:
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = llguidance.LLExecutor()
    return _EXECUTOR


def mask_constrained(
    scores: torch.Tensor, constraints: Sequence[RowConstraint | None], eos_token_ids: Sequence[int]
) -> torch.Tensor:
    """Set to -inf, in place, every logit that a row's grammar forbids; rows without a constraint are untouched."""
    rows = [row for row, constraint in enumerate(constraints) if constraint is not None]
    if not rows:
        return scores
    vocab_size = scores.shape[-1]
    active = [(constraints[row], i) for i, row in enumerate(rows) if not constraints[row].eos_only]
    allowed = torch.zeros((len(rows), vocab_size), dtype=torch.bool)
    if active:
        bitmask = llguidance.torch.allocate_token_bitmask(len(rows), active[0][0].vocab_size)
        llguidance.torch.fill_next_token_bitmask_par(
            _executor(), [(constraint.matcher, i) for constraint, i in active], bitmask
        )
        unpacked = unpack_bitmask(bitmask, vocab_size)
        allowed[:, : unpacked.shape[1]] = unpacked
    for i, row in enumerate(rows):
        if constraints[row].eos_only:
            allowed[i] = False
            allowed[i, list(eos_token_ids)] = True
    forbidden = torch.zeros(scores.shape, dtype=torch.bool)
    forbidden[rows] = ~allowed
    return scores.masked_fill_(forbidden.to(scores.device), float("-inf"))
