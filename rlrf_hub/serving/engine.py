"""Batched incremental decoding with a KV cache, for rows that join and leave while the batch runs.

A `Batch` is the running state: left-padded attention mask, per-row next position, the last sampled token of each
row and one `DynamicCache`. New rows are prefilled on their own and merged in (caches and masks padded on the left
to a common length); finished rows are dropped at once, and columns that became padding for every row are trimmed,
so finished rows stop costing compute. All rows of a batch share one adapter (or none).

Only the scheduler thread calls `Engine` methods that touch the model.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..backends.constrained import RowConstraint
from ..backends.transformers_backend import eos_token_ids
from .protocol import SamplingOptions, SequenceResult, TokenInfo
from .sampling import RowState, choose

DETOKENIZE_CONTEXT = 5


class Sink(Protocol):
    """Where a sequence reports its progress (a `scheduler.Job`)."""

    cancelled: bool

    def on_token(self, index: int, token: TokenInfo, result: SequenceResult | None) -> None:
        """A new token of row `index`; `result` is set when it was the row's last."""


@dataclass
class Sequence:
    """One row to generate, and its progress."""

    sink: Sink
    index: int
    prompt_ids: list[int]
    options: SamplingOptions
    max_new_tokens: int
    constraint: RowConstraint | None = None
    decoder_input_details: bool = False
    seed: int | None = None
    generator: torch.Generator | None = None
    generated: list[int] = field(default_factory=list)
    tokens: list[TokenInfo] = field(default_factory=list)
    stream_text: str = ""
    prefill: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    _context: list[int] = field(default_factory=list, repr=False)
    _prefix_offset: int = 0
    _read_offset: int = 0

    def __post_init__(self):
        if self.options.do_sample:
            if self.seed is None:
                self.seed = random.getrandbits(63)
            self.generator = torch.Generator().manual_seed(self.seed)
        else:
            self.seed = None
        self._context = self.prompt_ids[-DETOKENIZE_CONTEXT:]
        self._read_offset = len(self._context)

    def row_state(self) -> RowState:
        return RowState(self.options, self.generator, self.constraint, self.prompt_ids, self.generated)

    def next_text(self, tokenizer) -> str:
        """TGI's incremental detokenization: the new text of the last token, held back while a character is cut."""
        ids = self._context + self.generated
        prefix = tokenizer.decode(ids[self._prefix_offset : self._read_offset], skip_special_tokens=False)
        text = tokenizer.decode(ids[self._prefix_offset :], skip_special_tokens=False)
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(ids)
            return text[len(prefix) :]
        return ""


@dataclass
class Batch:
    sequences: list[Sequence]
    adapter: str | None
    cache: DynamicCache
    attention_mask: torch.Tensor
    positions: torch.Tensor
    next_tokens: torch.Tensor

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def mergeable(self) -> bool:
        return all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def keep(self, rows: list[int]) -> None:
        """Drop every row not in `rows`, then trim columns that are padding for all rows left."""
        if len(rows) != len(self.sequences):
            index = torch.tensor(rows, dtype=torch.long, device=self.attention_mask.device)
            self.sequences = [self.sequences[row] for row in rows]
            self.attention_mask = self.attention_mask.index_select(0, index)
            self.positions = self.positions.index_select(0, index)
            self.next_tokens = self.next_tokens.index_select(0, index)
            for layer in self.cache.layers:
                layer.batch_select_indices(index)
        if not self.sequences or not self.mergeable:
            return
        used = self.attention_mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else 0
        if first > 0:
            self.attention_mask = self.attention_mask[:, first:]
            for layer in self.cache.layers:
                layer.keys = layer.keys[..., first:, :]
                layer.values = layer.values[..., first:, :]


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def merge(running: Batch, joining: Batch) -> Batch:
    """One batch holding the rows of both (same adapter, plain dynamic caches)."""
    width = max(running.attention_mask.shape[1], joining.attention_mask.shape[1])
    for mine, theirs in zip(running.cache.layers, joining.cache.layers, strict=True):
        mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)])
        mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)])
    running.attention_mask = torch.cat(
        [_pad_left(running.attention_mask, width, 1), _pad_left(joining.attention_mask, width, 1)]
    )
    running.positions = torch.cat([running.positions, joining.positions])
    running.next_tokens = torch.cat([running.next_tokens, joining.next_tokens])
    running.sequences = running.sequences + joining.sequences
    return running


class Engine:
    """The model, its tokenizer and adapters, and the prefill / decode steps over `Batch`es."""

    def __init__(self, model, tokenizer, peft_model=None):
        self.model = model
        self.tokenizer = tokenizer
        self.peft_model = peft_model
        self.eos_token_ids = eos_token_ids(model, tokenizer)
        self._eos = set(self.eos_token_ids)
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]
        self.special_ids = set(tokenizer.all_special_ids) | self._eos
        self.device = next(model.parameters()).device
        parameters = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self._active_adapter: str | None = None
        self.forward_count = 0

    # Adapters ---------------------------------------------------------------------------------------------------
    def attach_adapter(self, path: str, internal: str) -> None:
        from peft import PeftModel

        if self.peft_model is None:
            self.peft_model = PeftModel.from_pretrained(self.model, path, adapter_name=internal)
        else:
            self.peft_model.load_adapter(path, adapter_name=internal)
        self.peft_model.eval()
        self._activate(self._active_adapter, force=True)

    def _activate(self, internal: str | None, force: bool = False) -> None:
        if self.peft_model is None or (internal == self._active_adapter and not force):
            return
        tuner = self.peft_model.base_model
        if internal is None:
            tuner.disable_adapter_layers()
        else:
            tuner.enable_adapter_layers()
            tuner.set_adapter(internal, inference_mode=True)
        self._active_adapter = internal

    # Steps ------------------------------------------------------------------------------------------------------
    def _forward(self, input_ids, attention_mask, position_ids, cache, logits_to_keep: int) -> torch.Tensor:
        self.forward_count += 1
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=logits_to_keep,
            **{self._cache_kwarg: cache},
        )
        return output.logits

    def prefill(self, sequences: list[Sequence], adapter: str | None) -> Batch | None:
        """Run the prompts of new rows, choose their first tokens; the batch of those still going (or None)."""
        self._activate(adapter)
        width = max(len(sequence.prompt_ids) for sequence in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, width - len(sequence.prompt_ids) :] = torch.tensor(sequence.prompt_ids)
            attention_mask[row, width - len(sequence.prompt_ids) :] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_(min=0)
        cache = DynamicCache(config=self.model.config)
        with_prefill = any(sequence.decoder_input_details for sequence in sequences)
        with torch.inference_mode():
            logits = self._forward(input_ids, attention_mask, position_ids, cache, 0 if with_prefill else 1)
        if with_prefill:
            self._prefill_details(sequences, logits, width)
        batch = Batch(
            sequences=list(sequences),
            adapter=adapter,
            cache=cache,
            attention_mask=attention_mask,
            positions=attention_mask.sum(-1),
            next_tokens=torch.zeros(len(sequences), dtype=torch.long, device=self.device),
        )
        return self._advance(batch, logits[:, -1, :])

    def decode(self, batch: Batch) -> Batch | None:
        """One step for every row; the batch of rows still going (or None)."""
        self._activate(batch.adapter)
        keep = [row for row, sequence in enumerate(batch.sequences) if not sequence.sink.cancelled]
        batch.keep(keep)
        if not batch.sequences:
            return None
        ones = batch.attention_mask.new_ones((len(batch), 1))
        attention_mask = torch.cat([batch.attention_mask, ones], dim=1)
        with torch.inference_mode():
            logits = self._forward(
                batch.next_tokens.unsqueeze(1), attention_mask, batch.positions.unsqueeze(1), batch.cache, 1
            )
        batch.attention_mask = attention_mask
        batch.positions = batch.positions + 1
        return self._advance(batch, logits[:, -1, :])

    def _prefill_details(self, sequences: list[Sequence], logits: torch.Tensor, width: int) -> None:
        for row, sequence in enumerate(sequences):
            if not sequence.decoder_input_details:
                continue
            ids = sequence.prompt_ids
            start = width - len(ids)
            logprobs = torch.log_softmax(logits[row, start : width - 1].float(), dim=-1)
            picked = logprobs.gather(1, torch.tensor(ids[1:], device=logprobs.device).unsqueeze(1)).squeeze(1)
            values = [None, *picked.tolist()]
            sequence.prefill = [
                {"id": token, "text": self.tokenizer.decode([token], skip_special_tokens=False), "logprob": value}
                for token, value in zip(ids, values, strict=True)
            ]

    def _advance(self, batch: Batch, logits: torch.Tensor) -> Batch | None:
        with torch.inference_mode():
            choices = choose(logits, [sequence.row_state() for sequence in batch.sequences], self.eos_token_ids)
        keep = []
        for row, (sequence, choice) in enumerate(zip(batch.sequences, choices, strict=True)):
            self._accept(sequence, choice.token_id, choice.logprob, choice.top)
            if sequence.finish_reason is None:
                keep.append(row)
        batch.next_tokens = torch.tensor([choice.token_id for choice in choices], device=self.device)
        batch.keep(keep)
        return batch if batch.sequences else None

    def _token(self, token_id: int, text: str, logprob: float) -> TokenInfo:
        return TokenInfo(token_id, text, logprob, token_id in self.special_ids)

    def _accept(self, sequence: Sequence, token_id: int, logprob: float, top: list[tuple[int, float]]) -> None:
        sequence.generated.append(token_id)
        text = sequence.next_text(self.tokenizer)
        token = self._token(token_id, text, logprob)
        token.top = [
            self._token(top_id, self.tokenizer.decode([top_id], skip_special_tokens=False), top_logprob)
            for top_id, top_logprob in top
        ]
        sequence.tokens.append(token)
        tail_start = max(0, len(sequence.stream_text) - max((len(stop) for stop in sequence.options.stop), default=0))
        sequence.stream_text += text
        if sequence.constraint is not None and token_id not in self._eos:
            sequence.constraint.consume(token_id)
        if token_id in self._eos:
            sequence.finish_reason = "eos_token"
        elif any(stop in sequence.stream_text[tail_start:] for stop in sequence.options.stop):
            sequence.finish_reason = "stop_sequence"
        elif len(sequence.generated) >= sequence.max_new_tokens:
            sequence.finish_reason = "length"
        result = self.result(sequence) if sequence.finish_reason is not None else None
        sequence.sink.on_token(sequence.index, token, result)

    def result(self, sequence: Sequence) -> SequenceResult:
        return SequenceResult(
            text=self.tokenizer.decode(sequence.generated, skip_special_tokens=True),
            tokens=sequence.tokens,
            finish_reason=sequence.finish_reason or "length",
            seed=sequence.seed,
            input_length=len(sequence.prompt_ids),
            prefill=sequence.prefill,
        )
