"""A request's grammar for the server: JSON schemas (through `backends.constrained`) and regular expressions.

The per-row machinery (`RowConstraint`, `mask_constrained`) lives in `backends.constrained`; here a request's grammar
is compiled, and what cannot be compiled becomes a 422.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import llguidance

from ..backends.constrained import RowConstraint, llguidance_tokenizer, schema_grammar
from .errors import ValidationError
from .protocol import Grammar


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


def make_constraint(tokenizer, eos_token_ids: Sequence[int], grammar_text: str) -> RowConstraint:
    """A request's constraint; a 422 when llguidance cannot use the grammar."""
    try:
        return RowConstraint(llguidance_tokenizer(tokenizer, eos_token_ids), grammar_text)
    except ValueError as err:
        raise ValidationError(str(err)) from None
