"""JSON-schema constrained decoding for transformers `generate`, with llguidance.

`JSONSchemaLogitsProcessor` keeps one `llguidance.LLMatcher` per batch row that has a schema. On every
step it feeds each constrained row's newly generated token to that row's matcher, asks llguidance for the
set of tokens the grammar allows next (a bitmask, computed for all rows in parallel) and sets every other
logit to -inf. Rows without a schema are left untouched, so constrained and free rows can share a batch.
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
        self.ll_tokenizer = llguidance_tokenizer(tokenizer, self.eos_token_ids)
        self.rows = [row for row, schema in enumerate(schemas) if schema is not None]
        self.matchers = [
            llguidance.LLMatcher(self.ll_tokenizer, schema_grammar(schemas[row]), log_level=0) for row in self.rows
        ]
        for row, matcher in zip(self.rows, self.matchers, strict=True):
            if matcher.is_error():
                raise ValueError(f"row {row}: cannot build a matcher for its schema: {_first_line(matcher)}")
        self.finished = [False] * len(self.rows)
        self.bitmask = llguidance.torch.allocate_token_bitmask(len(self.rows), self.ll_tokenizer.vocab_size)
        self._started = False

    def _consume(self, last_tokens: list[int]) -> None:
        eos = set(self.eos_token_ids)
        for i, (row, matcher) in enumerate(zip(self.rows, self.matchers, strict=True)):
            if self.finished[i]:
                continue
            token = last_tokens[row]
            if token in eos:
                self.finished[i] = True
            elif not matcher.consume_token(token):
                logger.warning("constrained row %d left its grammar: %s", row, _first_line(matcher))
                self.finished[i] = True

    def _eos_only(self, i: int) -> bool:
        return self.finished[i] or self.matchers[i].is_stopped() or self.matchers[i].is_error()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.rows:
            return scores
        if self._started:
            self._consume(input_ids[:, -1].tolist())
        self._started = True

        vocab_size = scores.shape[-1]
        pending = [(matcher, i) for i, matcher in enumerate(self.matchers) if not self._eos_only(i)]
        if pending:
            llguidance.torch.fill_next_token_bitmask_par(_executor(), pending, self.bitmask)
        allowed = unpack_bitmask(self.bitmask, vocab_size)
        if allowed.shape[1] < vocab_size:
            padding = allowed.new_zeros((allowed.shape[0], vocab_size - allowed.shape[1]))
            allowed = torch.cat([allowed, padding], dim=1)
        for i in range(len(self.rows)):
            if self._eos_only(i):
                allowed[i] = False
                allowed[i, self.eos_token_ids] = True
        forbidden = torch.zeros(scores.shape, dtype=torch.bool)
        forbidden[self.rows] = ~allowed
        return scores.masked_fill_(forbidden.to(scores.device, non_blocking=True), float("-inf"))
