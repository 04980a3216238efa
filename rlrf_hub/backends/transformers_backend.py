"""In-process generation with transformers: batched, length-sorted, seeded per sequence, optionally JSON-constrained.

Determinism. Every sequence (request `r`, sample `k`) samples with its own `torch.Generator`, seeded from
`params.seed`, the request's content (messages and schema), `k`, and how many identical requests came
before it. The global torch RNG is neither used nor touched. Hence:

- the same requests with the same `params` and `batch_size` on the same machine give identical outputs;
- a request's generations do not depend on which other requests are in the call or where it sits in the
  list, up to floating-point effects of batching: padding and batch shape can change logits in the last
  bits, which flips a sampled token only when two candidates are almost exactly tied (rare, but possible);
- identical requests in one call still get different samples (the occurrence count enters the seed).

Greedy decoding (`do_sample=False` or `temperature <= 0`) ignores the seed, so its `n` copies are equal.

Speed. Llama-architecture models on the CPU (the embedded SmolLM2 among them) generate through `packed_decode`
(packed prefill, static cache, finished rows dropped, half-precision weight copies), JSON-constrained rows included:
each row's llguidance mask is applied before its draw. Other models go through `model.generate`. Both sample with
`nucleus.SeededNucleusSampler`, so a row's draws are the same either way up to floating-point rounding and, with
the default half-precision weights, the rounding of the weights (a next-token KL divergence below 1e-4 on the
embedded model, see `projections`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList

from .base import Generation, GenerationRequest, SamplingParams
from .constrained import JSONSchemaLogitsProcessor, RowConstraint, advance, mask_constrained, schema_constraints
from .nucleus import SeededNucleusSampler
from .packed_decode import Chooser, PackedDecoder, generate_tokens, supports
from .projections import WeightPrecision


@dataclass
class _Sequence:
    request_index: int
    sample_index: int
    prompt_ids: list[int]
    json_schema: dict[str, Any] | None
    seed: int


def sequence_seed(seed: int, request: GenerationRequest, occurrence: int, sample_index: int) -> int:
    """A 63-bit seed from the sampling seed and what is generated, not from where it sits in a call."""
    content = json.dumps({"messages": request.messages, "json_schema": request.json_schema}, sort_keys=True)
    key = f"{seed}\x00{occurrence}\x00{sample_index}\x00{content}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") & (2**63 - 1)


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a reply: the generation config's EOS (an int or a list) and the tokenizer's."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.add(tokenizer.eos_token_id)
    ids.discard(None)
    return sorted(ids)


def completion_length(tokens: list[int], eos_ids: set[int]) -> tuple[int, str]:
    """Generated tokens up to and including the first EOS (padding after it excluded), and the finish reason."""
    for position, token in enumerate(tokens):
        if token in eos_ids:
            return position + 1, "stop"
    return len(tokens), "length"


def expand_requests(requests: Sequence[GenerationRequest], prompt_ids: list[list[int]], seed: int) -> list[_Sequence]:
    """One `_Sequence` per sample of every request, each with its own seed (see the module docstring)."""
    occurrences: dict[str, int] = {}
    sequences = []
    for index, (request, ids) in enumerate(zip(requests, prompt_ids, strict=True)):
        key = json.dumps([request.messages, request.json_schema], sort_keys=True)
        occurrence = occurrences.get(key, 0)
        occurrences[key] = occurrence + 1
        for k in range(request.n):
            sequences.append(
                _Sequence(index, k, ids, request.json_schema, sequence_seed(seed, request, occurrence, k))
            )
    return sequences


def logits_processors(
    tokenizer, eos_ids: list[int], batch: list[_Sequence], params: SamplingParams
) -> LogitsProcessorList:
    """JSON constraints (rows with a schema), then temperature, top-p and the per-row seeded draw."""
    processors = LogitsProcessorList()
    schemas = [sequence.json_schema for sequence in batch]
    if any(schema is not None for schema in schemas):
        processors.append(JSONSchemaLogitsProcessor(tokenizer, schemas, eos_ids))
    if params.do_sample and params.temperature > 0:
        seeds = [sequence.seed for sequence in batch]
        processors.append(SeededNucleusSampler(seeds, params.temperature, params.top_p))
    return processors


def constrained(choose: Chooser, constraints: list[RowConstraint | None], eos_token_ids: list[int]) -> Chooser:
    """`choose` restricted to what each constrained row's grammar allows, its matcher told the token chosen."""

    def choose_within_grammar(logits: torch.Tensor, rows: list[int]) -> list[int]:
        row_constraints = [constraints[row] for row in rows]
        tokens = choose(mask_constrained(logits, row_constraints, eos_token_ids), rows)
        advance(row_constraints, tokens, eos_token_ids)
        return tokens

    return choose_within_grammar


def length_sorted(sequences: list[_Sequence]) -> list[int]:
    """Indices of `sequences`, longest prompt first (memory trouble shows at once), ties in request order."""
    return sorted(range(len(sequences)), key=lambda i: (-len(sequences[i].prompt_ids), i))


def prefix_sorted(sequences: list[_Sequence]) -> list[int]:
    """Indices of `sequences` in the order of their prompt tokens, so that prompts starting alike share a batch
    (where the packed decoder computes what they share once), ties in request order."""
    return sorted(range(len(sequences)), key=lambda i: (sequences[i].prompt_ids, i))


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


class TransformersBackend:
    """Generates with a transformers causal LM in this process (the `GenerationBackend` protocol).

    Sequences of all requests are generated in batches of `batch_size`, sorted by their prompt tokens on the packed
    path (prompts that start alike share a batch and their prefix) and by prompt length, longest first, through
    `model.generate` (least padding); results come back in request order.
    Requests with a `json_schema` decode under llguidance constraints, mixed freely with free rows.

    Args:
        model: a causal LM in eval mode, on the device to generate on.
        tokenizer: its fast tokenizer, with a chat template.
        model_id, revision, adapter: who generates, recorded for lineage.
        batch_size: sequences per batch.
        packed: use the packed decoder where the model supports it; `False` always goes through `model.generate`.
        weight_precision: how the packed decoder keeps the projections' weights (`projections`): "float16" (the
            default where fbgemm is available) or "float32", the model's own.
    """

    def __init__(
        self,
        model,
        tokenizer,
        model_id: str,
        revision: str | None = None,
        adapter: str | None = None,
        batch_size: int = 32,
        packed: bool = True,
        weight_precision: WeightPrecision | None = None,
    ):
        _check_batch_size(batch_size)
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.revision = revision
        self.adapter = adapter
        self.batch_size = batch_size
        self.eos_token_ids = eos_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]
        self.total_tokens = 0
        self._decoder = PackedDecoder(model, weight_precision) if packed and supports(model) else None

    def with_batch_size(self, batch_size: int) -> TransformersBackend:
        """This backend (same model, tokenizer and packed weights) cutting its batches at `batch_size`."""
        _check_batch_size(batch_size)
        other = copy.copy(self)
        other.batch_size, other.total_tokens = batch_size, 0
        return other

    @property
    def weight_precision(self) -> WeightPrecision | None:
        """The packed decoder's weight precision; None when every batch goes through `model.generate`."""
        return self._decoder.precision if self._decoder is not None else None

    @classmethod
    def from_pretrained(
        cls,
        model_id: str,
        revision: str | None = None,
        adapter: str | None = None,
        load_in_4bit: bool = False,
        batch_size: int = 32,
        device: str | None = None,
    ) -> TransformersBackend:
        """Load a model (embedded names, Hub ids or paths) and its tokenizer; the GPU is used when present."""
        from ..models import load_causal_lm, load_tokenizer

        model = load_causal_lm(model_id, revision=revision, adapter=adapter, load_in_4bit=load_in_4bit)
        if not load_in_4bit:
            model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        tokenizer = load_tokenizer(model_id, revision=revision)
        return cls(model, tokenizer, model_id, revision=revision, adapter=adapter, batch_size=batch_size)

    def _prompt_texts(self, messages_list: Sequence[list[dict[str, str]]]) -> list[str]:
        return [
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            for messages in messages_list
        ]

    def encode_prompts(self, messages_list: Sequence[list[dict[str, str]]]) -> list[list[int]]:
        """Token ids of each chat with the template and generation prompt applied, as the model sees it."""
        if not messages_list:
            return []
        return self.tokenizer(self._prompt_texts(messages_list), add_special_tokens=False)["input_ids"]

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Length of the prompt the model sees for these messages (chat template and generation prompt included)."""
        return len(self.encode_prompts([messages])[0])

    def left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """`input_ids` and `attention_mask` of a left-padded batch, on the model's device."""
        width = max(len(ids) for ids in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            if ids:
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, width - len(ids) :] = 1
        return input_ids.to(self.model.device), attention_mask.to(self.model.device)

    def _generate_batch(self, batch: list[_Sequence], params: SamplingParams) -> list[Generation]:
        if self._decoder is not None:
            rows = self._generate_packed(batch, params)
        else:
            rows = self._generate_with_generate(batch, params)
        eos = set(self.eos_token_ids)
        generations = []
        for tokens in rows:
            num_tokens, finish_reason = completion_length(tokens, eos)
            text = self.tokenizer.decode(tokens[:num_tokens], skip_special_tokens=True)
            generations.append(Generation(text=text, num_tokens=num_tokens, finish_reason=finish_reason))
        self.total_tokens += sum(generation.num_tokens for generation in generations)
        return generations

    def _generate_packed(self, batch: list[_Sequence], params: SamplingParams) -> list[list[int]]:
        if params.do_sample and params.temperature > 0:
            sampler = SeededNucleusSampler([sequence.seed for sequence in batch], params.temperature, params.top_p)
            choose = sampler.choose
        else:

            def choose(logits: torch.Tensor, rows: list[int]) -> list[int]:
                return logits.argmax(dim=-1).tolist()

        if any(sequence.json_schema is not None for sequence in batch):
            constraints = schema_constraints(self.tokenizer, [s.json_schema for s in batch], self.eos_token_ids)
            choose = constrained(choose, constraints, self.eos_token_ids)
        prompts = [sequence.prompt_ids for sequence in batch]
        return generate_tokens(self._decoder, prompts, params.max_new_tokens, choose, set(self.eos_token_ids))

    def _generate_with_generate(self, batch: list[_Sequence], params: SamplingParams) -> list[list[int]]:
        input_ids, attention_mask = self.left_pad([sequence.prompt_ids for sequence in batch])
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=params.max_new_tokens,
                do_sample=False,  # sampling happens in SeededNucleusSampler
                logits_processor=logits_processors(self.tokenizer, self.eos_token_ids, batch, params),
                eos_token_id=self.eos_token_ids,
                pad_token_id=self.pad_token_id,
            )
        return output[:, input_ids.shape[1] :].tolist()

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, desc: str | None = None
    ) -> list[list[Generation]]:
        """Return, for each request, its `n` generations in order (see the module docstring on seeding)."""
        sequences = expand_requests(requests, self.encode_prompts([r.messages for r in requests]), params.seed)
        order = length_sorted(sequences) if self._decoder is None else prefix_sorted(sequences)
        results: list[list[Generation | None]] = [[None] * request.n for request in requests]
        with tqdm(total=len(sequences), desc=desc, unit="seq") as progress:
            for start in range(0, len(order), self.batch_size):
                batch = [sequences[i] for i in order[start : start + self.batch_size]]
                for sequence, generation in zip(batch, self._generate_batch(batch, params), strict=True):
                    results[sequence.request_index][sequence.sample_index] = generation
                progress.update(len(batch))
        return results  # type: ignore[return-value]
