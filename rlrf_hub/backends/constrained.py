"""JSON-schema constrained decoding for transformers `generate`, with llguidance.

A `RowConstraint` holds one sequence's `llguidance.LLMatcher`. On every step each constrained row's newly
generated token goes to its matcher, llguidance computes the set of tokens the grammar allows next (a bitmask,
for all rows in parallel) and `mask_constrained` sets every other logit to -inf. Rows without a constraint are
left untouched, so constrained and free rows can share a batch. `JSONSchemaLogitsProcessor` does this inside
`model.generate`; the packed decoder and the server's engine call the same functions directly.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import llguidance
import llguidance.hf
import llguidance.torch
import torch
from transformers import LogitsProcessor

logger = logging.getLogger(__name__)

# Compact JSON: free whitespace lets a weak model spend its token budget on blank lines.
# A schema can still ask for whitespace through its own "x-guidance" options.
JSON_COMPILE_DEFAULTS = {"whitespace_flexible": False}

_TOKENIZER_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TOKENIZER_LOCK = threading.Lock()
_EXECUTOR: llguidance.LLExecutor | None = None


def llguidance_tokenizer(tokenizer, eos_token_ids: Iterable[int] | None = None) -> llguidance.LLTokenizer:
    """The llguidance view of a fast HF tokenizer, built once per tokenizer (and EOS set): building costs ~0.5 s."""
    eos = tuple(sorted(set(eos_token_ids))) if eos_token_ids is not None else (tokenizer.eos_token_id,)
    with _TOKENIZER_LOCK:
        per_tokenizer = _TOKENIZER_CACHE.setdefault(tokenizer, {})
        if eos not in per_tokenizer:
            per_tokenizer[eos] = llguidance.hf.from_tokenizer(tokenizer, eos_token=list(eos))
        return per_tokenizer[eos]


def _executor() -> llguidance.LLExecutor:
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = llguidance.LLExecutor()
    return _EXECUTOR


_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")
_SUBSCHEMA_LIST_KEYS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAP_KEYS = ("properties", "patternProperties", "$defs", "definitions")


def close_objects(schema: Any) -> Any:
    """Return a copy where every object schema that lists `properties` but leaves `additionalProperties`
    unset forbids extra keys.

    JSON Schema allows undeclared keys by default, and a weak model happily invents them (a random one never
    stops). The closed schema accepts a subset of what the original accepts, so every output still validates
    against the caller's schema.
    """
    if not isinstance(schema, dict):
        return copy.deepcopy(schema)
    closed = copy.deepcopy(schema)
    for key in _SUBSCHEMA_KEYS:
        if isinstance(schema.get(key), dict):
            closed[key] = close_objects(schema[key])
    for key in _SUBSCHEMA_LIST_KEYS:
        if isinstance(schema.get(key), list):
            closed[key] = [close_objects(sub) for sub in schema[key]]
    for key in _SUBSCHEMA_MAP_KEYS:
        if isinstance(schema.get(key), dict):
            closed[key] = {name: close_objects(sub) for name, sub in schema[key].items()}
    if "properties" in schema:
        closed.setdefault("additionalProperties", False)
    return closed


@functools.lru_cache(maxsize=256)
def _grammar_from_schema_text(schema_text: str) -> str:
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_text, defaults=JSON_COMPILE_DEFAULTS)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ValueError(f"JSON schema cannot be compiled for constrained decoding: {messages[0]}")
    return grammar


def schema_grammar(schema: dict[str, Any]) -> str:
    """The llguidance grammar for a JSON schema (objects closed, compact JSON), cached per schema."""
    return _grammar_from_schema_text(json.dumps(close_objects(schema)))


_BYTE_BITS = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1).bool()


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Bool (rows, vocab_size) from llguidance's int32 bitmask (bit j of word w is token 32 * w + j).

    A byte lookup table instead of `llguidance.torch.apply_token_bitmask_inplace`, which goes through
    `torch.compile` and costs seconds of compilation on a CPU-only machine. The words are read as bytes in
    the machine's order, which is little-endian on every platform torch supports.
    """
    as_bytes = bitmask.contiguous().view(torch.uint8).long()
    return _BYTE_BITS[as_bytes].reshape(bitmask.shape[0], -1)[:, :vocab_size]


def _first_line(matcher: llguidance.LLMatcher) -> str:
    """llguidance's error text goes on with the parser state and the whole grammar; the first line says it."""
    return matcher.get_error().split("\n", 1)[0]


class RowConstraint:
    """One sequence's matcher: told each sampled token, asked which tokens may come next.

    It belongs to a sequence, not to a batch position, so rows can join and leave a running batch.
    """

    def __init__(self, ll_tokenizer: llguidance.LLTokenizer, grammar_text: str):
        self.matcher = llguidance.LLMatcher(ll_tokenizer, grammar_text, log_level=0)
        self.vocab_size = ll_tokenizer.vocab_size
        if self.matcher.is_error():
            raise ValueError(f"grammar cannot be used: {_first_line(self.matcher)}")
        self.failed = False

    def consume(self, token: int) -> None:
        if not self.failed and not self.matcher.consume_token(token):
            logger.warning("constrained row left its grammar: %s", _first_line(self.matcher))
            self.failed = True

    @property
    def eos_only(self) -> bool:
        """The grammar is complete or broken: the row may only end."""
        return self.failed or self.matcher.is_stopped() or self.matcher.is_error()


def schema_constraints(
    tokenizer, schemas: Sequence[dict[str, Any] | None], eos_token_ids: Iterable[int]
) -> list[RowConstraint | None]:
    """One constraint per row that has a JSON schema, `None` for free rows."""
    ll_tokenizer = llguidance_tokenizer(tokenizer, eos_token_ids)
    constraints: list[RowConstraint | None] = []
    for row, schema in enumerate(schemas):
        try:
            constraints.append(None if schema is None else RowConstraint(ll_tokenizer, schema_grammar(schema)))
        except ValueError as err:
            raise ValueError(f"row {row}: {err}") from None
    return constraints


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


def advance(constraints: list[RowConstraint | None], tokens: Sequence[int], eos_token_ids: Iterable[int]) -> None:
    """Feed each constrained row the token it just produced; a row that ended drops its constraint."""
    eos = set(eos_token_ids)
    for row, token in enumerate(tokens):
        if constraints[row] is None:
            continue
        if token in eos:
            constraints[row] = None
        else:
            constraints[row].consume(token)


class JSONSchemaLogitsProcessor(LogitsProcessor):
    """Masks the logits of each row that has a JSON schema to the tokens its grammar allows next.

    Use one instance per `generate` call: on its first call `input_ids` is the prompt alone; from then on
    the last column of `input_ids` is the token sampled at the previous step. transformers 5 passes
    the full sequence (prompt + generated so far) on every step, and appends `pad_token_id` to rows that
    have finished; a row stops consuming once it has produced an EOS token. A row whose matcher has
    stopped (grammar complete) or failed can only emit EOS.

    Args:
        tokenizer: the fast HF tokenizer of the model.
        schemas: one entry per batch row, a JSON schema or `None` for an unconstrained row.
        eos_token_ids: the ids that end generation; defaults to the tokenizer's EOS.
    """

    def __init__(
        self, tokenizer, schemas: Sequence[dict[str, Any] | None], eos_token_ids: Iterable[int] | None = None
    ):
        self.eos_token_ids = sorted(set(eos_token_ids)) if eos_token_ids is not None else [tokenizer.eos_token_id]
        self.constraints = schema_constraints(tokenizer, schemas, self.eos_token_ids)
        self._started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._started:
            advance(self.constraints, input_ids[:, -1].tolist(), self.eos_token_ids)
        self._started = True
        return mask_constrained(scores, self.constraints, self.eos_token_ids)
