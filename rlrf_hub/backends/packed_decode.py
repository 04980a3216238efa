"""Generation for llama-architecture models without `generate`: packed prefill, a static cache, shrinking batches.

On 2 CPU cores `generate` spends as much time around the model as in it: prompts are left-padded to the longest
(about half the prefill was padding on GSM8K batches), the cache is concatenated at every step, and rows that
ended keep going through every layer. Here:

- prefill packs the batch's distinct prompts end to end as a prefix tree: tokens that several prompts start with
  (the chat template's system prompt, a judge's rubric and question before the answers it rates, the passages
  of one entity before each fact) are computed once, and a prompt sampled `n` times is computed once;
- each row's keys and values go to a preallocated cache `[rows, kv_heads, capacity, head_dim]`, written in place;
- only rows still generating go through the projections, the MLP and the LM head; attention runs over every cache
  row, so once half the rows or more have ended the cache is compacted to the rows still going (a step's attention
  reads every row's keys and values and, on 2 cores, is bound by that reading).

The arithmetic follows the model's own modules (embedding, norms, rotary embedding) in the model's order. The
projections and the LM head run through `projections`: fused, and by default with half-precision copies of the
weights and fp32 arithmetic, which halves the bytes every decode step reads. Logits equal `model(...)`'s up to
floating-point rounding with `precision="float32"`, and those of the model with its weights rounded to half
precision with "float16" (tests check both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .projections import (
    LayerProjections,
    ModelProjections,
    WeightPrecision,
    default_precision,
    model_projections,
    require_half_weights,
    weight_versions,
)

SUPPORTED_MODEL_TYPES = ("llama",)


def supports(model) -> bool:
    """True for a plain (merged, unquantized-by-bitsandbytes) llama-architecture causal LM on the CPU."""
    config = getattr(model, "config", None)
    return (
        config is not None
        and getattr(config, "model_type", None) in SUPPORTED_MODEL_TYPES
        and getattr(config, "pretraining_tp", 1) == 1
        and not getattr(model, "is_loaded_in_4bit", False)
        and hasattr(model, "lm_head")
        and hasattr(getattr(model, "model", None), "layers")
        and model.device.type == "cpu"
    )


@dataclass
class Cache:
    keys: list[torch.Tensor]  # per layer: [rows, kv_heads, capacity, head_dim]
    values: list[torch.Tensor]
    lengths: torch.Tensor  # [rows]: filled positions per row

    def keep(self, slots: torch.Tensor) -> None:
        """Keep only the rows at `slots`, in that order, layer by layer (so at most one layer is held twice)."""
        for layer in range(len(self.keys)):
            self.keys[layer] = self.keys[layer].index_select(0, slots)
            self.values[layer] = self.values[layer].index_select(0, slots)
        self.lengths = self.lengths.index_select(0, slots)


@dataclass
class Segment:
    """Tokens of the prefix tree (a radix tree): they follow `parent`'s tokens and start at position `start`."""

    tokens: list[int]
    start: int
    parent: int  # -1 at the root


def _shared_length(prompts: list[tuple[int, ...]], depth: int) -> int:
    first = prompts[0]
    limit = min(len(ids) for ids in prompts)
    shared = depth
    while shared < limit and all(ids[shared] == first[shared] for ids in prompts):
        shared += 1
    return shared - depth


def prefix_tree(prompts: list[tuple[int, ...]]) -> tuple[list[Segment], list[int]]:
    """The segments of distinct, non-empty `prompts`, each after its parent, and the segment each prompt ends in."""
    segments: list[Segment] = []
    ends = [-1] * len(prompts)
    groups = [(list(range(len(prompts))), 0, -1)]
    while groups:
        group, depth, parent = groups.pop()
        shared = _shared_length([prompts[i] for i in group], depth)
        if shared:
            segments.append(Segment(list(prompts[group[0]][depth : depth + shared]), depth, parent))
            parent, depth = len(segments) - 1, depth + shared
        branches: dict[int, list[int]] = {}
        for i in group:
            if len(prompts[i]) == depth:
                ends[i] = parent
            else:
                branches.setdefault(prompts[i][depth], []).append(i)
        groups.extend((branch, depth, parent) for branch in branches.values())
    return segments, ends


class PackedDecoder:
    """Prefill and decode steps for one llama-architecture model (see the module docstring)."""

    def __init__(self, model, precision: WeightPrecision | None = None):
        self.model = model
        self.base = model.model
        self.precision = precision or default_precision()
        if self.precision == "float16":
            require_half_weights()
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self._projections: ModelProjections | None = None

    @property
    def projections(self) -> ModelProjections:
        """The model's maps, rebuilt when its weights changed since they were built (a training step in between)."""
        if self._projections is None or self._projections.versions != weight_versions(self.model):
            self._projections = model_projections(self.model, self.precision)
        return self._projections

    def _rotary(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.base.rotary_emb(x, positions.unsqueeze(0))
        return cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # [tokens, 1, head_dim]

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _qkv(self, layer, maps: LayerProjections, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Queries and keys rotated, and values, as `[tokens, heads, head_dim]`; q and k are rotated as one tensor
        (they sit side by side in the fused projection's output)."""
        heads = self.heads + 2 * self.kv_heads
        qkv = maps.qkv(layer.input_layernorm(x)).view(x.shape[0], heads, self.head_dim)
        rotated = self._rotate(qkv[:, : self.heads + self.kv_heads], cos, sin)
        q, k = rotated.split((self.heads, self.kv_heads), dim=1)
        return q, k, qkv[:, self.heads + self.kv_heads :]

    @staticmethod
    def _finish_layer(layer, maps: LayerProjections, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        x = x + maps.o(attended.reshape(x.shape[0], -1))
        return x + maps.mlp(layer.post_attention_layernorm(x))

    def _logits(self, hidden: torch.Tensor, projections: ModelProjections) -> torch.Tensor:
        return projections.head(self.base.norm(hidden)).float()

    def prefill(self, prompts: list[list[int]], capacity: int) -> tuple[Cache, torch.Tensor]:
        """A cache holding every prompt, with room for `capacity` positions per row, and each row's next logits."""
        distinct = list(dict.fromkeys(tuple(ids) for ids in prompts))
        segments, ends = prefix_tree(distinct)
        sizes = [len(segment.tokens) for segment in segments]
        starts = _starts(sizes)
        x = self.base.embed_tokens(torch.tensor([t for segment in segments for t in segment.tokens]))
        positions = [torch.arange(segment.start, segment.start + len(segment.tokens)) for segment in segments]
        cos, sin = self._rotary(x, torch.cat(positions))
        which = {ids: index for index, ids in enumerate(distinct)}
        row_segments = [ends[which[tuple(ids)]] for ids in prompts]
        cache = self._empty_cache(len(prompts), capacity)
        projections = self.projections
        for index, (layer, maps) in enumerate(zip(self.base.layers, projections.layers, strict=True)):
            q, k, v = self._qkv(layer, maps, x, cos, sin)
            out = torch.empty_like(q)
            chains: list[tuple[torch.Tensor, torch.Tensor]] = []
            for segment, start, size in zip(segments, starts, sizes, strict=True):
                keys = k[start : start + size].transpose(0, 1)
                values = v[start : start + size].transpose(0, 1)
                if segment.parent >= 0:
                    keys = torch.cat((chains[segment.parent][0], keys), dim=1)
                    values = torch.cat((chains[segment.parent][1], values), dim=1)
                mask = torch.ones(size, segment.start + size, dtype=torch.bool).tril(diagonal=segment.start)
                attended = F.scaled_dot_product_attention(
                    q[start : start + size].transpose(0, 1), keys, values, attn_mask=mask, enable_gqa=True
                )
                out[start : start + size] = attended.transpose(0, 1)
                chains.append((keys, values))
            for row, segment in enumerate(row_segments):
                keys, values = chains[segment]
                cache.keys[index][row, :, : keys.shape[1]] = keys
                cache.values[index][row, :, : values.shape[1]] = values
            x = self._finish_layer(layer, maps, x, out)
        last = torch.tensor([starts[segment] + sizes[segment] - 1 for segment in ends])
        distinct_logits = self._logits(x[last], projections)
        cache.lengths = torch.tensor([len(ids) for ids in prompts])
        return cache, distinct_logits[[which[tuple(ids)] for ids in prompts]]

    def _empty_cache(self, rows: int, capacity: int) -> Cache:
        shape = (rows, self.kv_heads, capacity, self.head_dim)
        dtype = self.base.embed_tokens.weight.dtype
        layers = range(len(self.base.layers))
        return Cache(
            [torch.zeros(shape, dtype=dtype) for _ in layers],
            [torch.zeros(shape, dtype=dtype) for _ in layers],
            torch.zeros(rows, dtype=torch.long),
        )

    def step(self, cache: Cache, tokens: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Feed one token to each of `rows` (at its next position); returns their next-token logits."""
        positions = cache.lengths[rows]
        x = self.base.embed_tokens(tokens)
        cos, sin = self._rotary(x, positions)
        span = int(positions.max()) + 1
        all_rows = cache.lengths.shape[0]
        visible = cache.lengths.clone()
        visible[rows] = positions + 1
        hidden = (torch.arange(span).unsqueeze(0) >= visible.unsqueeze(1)).view(all_rows, 1, 1, span)
        groups = self.heads // self.kv_heads
        query = torch.zeros(all_rows, self.kv_heads, groups, self.head_dim, dtype=x.dtype)
        scale = self.head_dim**-0.5
        projections = self.projections
        for index, (layer, maps) in enumerate(zip(self.base.layers, projections.layers, strict=True)):
            q, k, v = self._qkv(layer, maps, x, cos, sin)
            cache.keys[index][rows, :, positions] = k
            cache.values[index][rows, :, positions] = v
            query[rows] = q.view(len(rows), self.kv_heads, groups, self.head_dim)
            scores = torch.matmul(query, cache.keys[index][:, :, :span].transpose(-1, -2)).mul_(scale)
            weights = torch.softmax(scores.masked_fill_(hidden, float("-inf")), dim=-1)
            attended = torch.matmul(weights, cache.values[index][:, :, :span])
            x = self._finish_layer(layer, maps, x, attended[rows])
        cache.lengths[rows] = positions + 1
        return self._logits(x, projections)


def _starts(sizes: list[int]) -> list[int]:
    starts, total = [], 0
    for size in sizes:
        starts.append(total)
        total += size
    return starts


Chooser = Callable[[torch.Tensor, list[int]], list[int]]


def generate_tokens(
    decoder: PackedDecoder, prompts: list[list[int]], max_new_tokens: int, choose: Chooser, eos: set[int]
) -> list[list[int]]:
    """Each prompt's new tokens (up to and including its EOS); `choose(logits, rows)` picks the rows' next tokens
    (`rows` are indices into `prompts`).

    Decode attention reads every cache row at every step, finished ones included, so once half the rows or more
    have ended the cache keeps only the rows still going (`slots` maps each of them to its cache row).
    """
    capacity = max(len(ids) for ids in prompts) + max_new_tokens
    with torch.inference_mode():
        cache, logits = decoder.prefill(prompts, capacity)
        active = list(range(len(prompts)))
        slots = list(active)
        generated: list[list[int]] = [[] for _ in prompts]
        for step in range(max_new_tokens):
            chosen = choose(logits, active)
            for row, token in zip(active, chosen, strict=True):
                generated[row].append(token)
            keep = [i for i, token in enumerate(chosen) if token not in eos]
            active, slots = [active[i] for i in keep], [slots[i] for i in keep]
            if not active or step == max_new_tokens - 1:
                break
            if 2 * len(slots) <= len(cache.lengths):
                cache.keep(torch.tensor(slots))
                slots = list(range(len(slots)))
            logits = decoder.step(cache, torch.tensor([chosen[i] for i in keep]), torch.tensor(slots))
    return generated
