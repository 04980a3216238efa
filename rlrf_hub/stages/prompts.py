"""The prompts stage: prompt sources -> one row per unique prompt with its task and reference, checked against the
policy's context before any model work, and published once for every iteration."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from ..errors import RecipeError, read_utf8
from ..ids import normalise_prompt, prompt_id
from ..publishing import Published
from .base import IterationContext
from .settings import PromptSource

NAME = "prompts"
PARENTS: tuple[str, ...] = ()
CARD_DESCRIPTION = (
    "Each row is one RL prompt with its task type (general, math or bio) and, where the task has one, the reference "
    "the feedback model is shown (a worked math solution or a Wikipedia text about the person)."
)

Record = tuple[str, dict]  # where the row is ("FILE line N", "DATASET row N") and the row


def load_records(source: PromptSource, where: str) -> list[Record]:
    """Rows of a `.jsonl`/`.json` file, a folder of them, or a Hub dataset id (through `datasets`), each with the
    place it comes from, for error messages."""
    path = Path(source.path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json"))
        if not files:
            raise RecipeError(f"{where}.path: folder {path} holds no .jsonl or .json file")
        return [record for f in files for record in _read_file(f, where)]
    if path.is_file():
        return _read_file(path, where)
    from datasets import load_dataset

    try:
        dataset = load_dataset(source.path, name=source.name, split=source.split)
    except Exception as err:
        raise RecipeError(f"{where}.path: cannot load dataset {source.path!r}: {err}") from None
    return [(f"{source.path} row {i}", row) for i, row in enumerate(dataset)]


def _read_file(path: Path, where: str) -> list[Record]:
    text = read_utf8(path, f"{where}.path")
    if path.suffix == ".jsonl":
        records = [(f"{path} line {n}", _parse_json(line, path, n, where)) for n, line in _lines(text)]
    else:
        data = _parse_json(text, path, None, where)
        if not isinstance(data, list):
            raise RecipeError(f"{where}.path: {path} must hold a JSON list of objects (or be a .jsonl file)")
        records = [(f"{path} item {i}", row) for i, row in enumerate(data)]
    for place, row in records:
        if not isinstance(row, dict):
            raise RecipeError(f"{where}.path: {place} is a {type(row).__name__}, not a JSON object (fix that row)")
    return records


def _lines(text: str):
    """(1-based line number, line) for every non-blank physical line; only `\n` ends a line, as in `wc -l`."""
    return ((n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip())


def _parse_json(text: str, path: Path, line: int | None, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        place = f"{path} line {line}" if line is not None else f"{path} line {err.lineno}"
        raise RecipeError(
            f"{where}.path: {place} is not valid JSON: {err.msg} at column {err.colno} (fix or remove that line)"
        ) from None


def load_reference_texts(path: str, where: str) -> dict[str, str]:
    """`{title: text}` or `{title: {"extract": text, ...}}` (the FActScore Wikipedia file's shape)."""
    data = _parse_json(read_utf8(Path(path), f"{where}.reference_file"), Path(path), None, f"{where}.reference_file")
    if not isinstance(data, dict):
        raise RecipeError(f"{where}.reference_file: {path} must hold a JSON object {{title: text}}")
    return {title: value["extract"] if isinstance(value, dict) else str(value) for title, value in data.items()}


def _prompt_text(row: dict, source: PromptSource, where: str) -> str:
    try:
        text = source.prompt_template.format(**row) if source.prompt_template else row[source.prompt_field]
    except KeyError as err:
        raise RecipeError(f"{where}: rows of {source.path} have no field {err.args[0]!r}") from None
    except (IndexError, TypeError, ValueError, AttributeError) as err:
        raise RecipeError(f"{where}.prompt_template cannot be filled from a row of {source.path}: {err}") from None
    if not isinstance(text, str) or not text.strip():
        raise RecipeError(f"{where}: empty prompt in {source.path}")
    return normalise_prompt(text)


def _reference(row: dict, source: PromptSource, references: dict[str, str] | None) -> str | None:
    text = None
    if source.reference_field:
        text = row.get(source.reference_field)
    elif references is not None and source.entity_field:
        text = references.get(row.get(source.entity_field, ""))
    return text[: source.max_reference_chars] if text else None


def source_rows(source: PromptSource, index: int) -> list[dict]:
    where = f"prompt_sources[{index}]"
    references = load_reference_texts(source.reference_file, where) if source.reference_file else None
    rows, places = [], []
    for place, record in load_records(source, where):
        reference = _reference(record, source, references)
        if source.require_reference and not reference:
            continue
        text = _prompt_text(record, source, where)
        rows.append(
            {
                "prompt_id": prompt_id(text),
                "prompt": text,
                "task": source.task,
                "reference": reference,
                "source": source.path,
            }
        )
        places.append(place)
    end = None if source.limit is None else source.offset + source.limit
    for row, place in zip(rows[source.offset : end], places[source.offset : end], strict=True):
        if source.task == "math" and not row["reference"]:
            raise RecipeError(_no_reference(source, where, place))
    return rows[source.offset : end]


def _no_reference(source: PromptSource, where: str, place: str) -> str:
    """Math answers are checked against the reference (by the verifier or the judge): a row without one would be
    judged blind."""
    if not source.reference_field:
        return (
            f"{where}.reference_field: math prompts are checked against a reference solution and {source.path} has "
            "none (name its column in reference_field)"
        )
    return (
        f"{where}: {place} has no reference in field {source.reference_field!r}; math answers are checked against it "
        "(fill it in, or set require_reference: true to leave such rows out)"
    )


def build_prompts(sources: list[PromptSource]) -> list[dict]:
    """All sources in order, duplicates (same normalised prompt) kept once; an empty result is an error."""
    seen: set[str] = set()
    prompts = []
    for index, source in enumerate(sources):
        for row in source_rows(source, index):
            if row["prompt_id"] not in seen:
                seen.add(row["prompt_id"])
                prompts.append(row)
    if not prompts:
        raise RecipeError("prompt_sources: the sources yield no prompt")
    return prompts


def check_prompt_lengths(
    prompts: list[dict], count_tokens, max_tokens: int, context: int | None = None, drop: bool = False
) -> list[dict]:
    """The prompts that fit the context budget. One that does not is a recipe error, found before any generation,
    or with `drop` left out (the caller counts what is missing).

    The budget is `max_prompt_tokens`, and never more than the policy's context (`context`, which already
    leaves room for `max_new_tokens`).
    """
    field, limit = "max_prompt_tokens", max_tokens
    if context is not None and context < max_tokens:
        field, limit = "max_new_tokens", context
    kept = []
    for row in prompts:
        length = count_tokens([{"role": "user", "content": row["prompt"]}])
        if length <= limit:
            kept.append(row)
        elif not drop:
            raise RecipeError(
                f"{field}: prompt {row['prompt_id']} from {row['source']} has {length} tokens, more than the "
                f"{limit} that fit (max_prompt_tokens {max_tokens}, context {context}): {row['prompt'][:80]!r}..."
            )
    return kept


def applies(ctx: IterationContext) -> bool:
    return True


def key_inputs(ctx: IterationContext) -> dict:
    s = ctx.settings.prompts
    return {
        "prompt_sources": [asdict(source) for source in s.sources],
        "max_prompt_tokens": s.max_prompt_tokens,
        "long_prompts": s.long_prompts,
    }


def find(ctx: IterationContext) -> Published | None:
    """Worker 0 builds the prompts; the others wait for them."""
    return ctx.wait_published("the prompts", lambda: ctx.publisher.find(NAME, 0))


def load(ctx: IterationContext, found: Published) -> list[dict]:
    return list(ctx.publisher.load(NAME, 0))


def run(ctx: IterationContext, key: str) -> tuple[list[dict], Published]:
    """Build and validate the prompts (before any model work) and publish them."""
    s = ctx.settings
    prompts = build_prompts(list(s.prompts.sources))
    built = len(prompts)
    count, room = _token_counter(s.policy.model, s.policy.revision, s.sampling.max_new_tokens)
    prompts = check_prompt_lengths(
        prompts, count, s.prompts.max_prompt_tokens, room, drop=s.prompts.long_prompts == "drop"
    )
    if not prompts:
        raise RecipeError(f"long_prompts: all {built} prompts are longer than max_prompt_tokens; none is left")
    lineage = {
        "run": s.run_name,
        "stage": NAME,
        "iteration": 0,
        "sources": [asdict(source) for source in s.prompts.sources],
        "counts": {"rows": len(prompts), "too_long": built - len(prompts), **Counter(row["task"] for row in prompts)},
        "content_key": key,
    }
    return prompts, ctx.publisher.publish_dataset(NAME, 0, prompts, lineage, CARD_DESCRIPTION)


def _token_counter(model: str, revision: str | None, max_new_tokens: int):
    """How many tokens a prompt takes with the policy's chat template, and how many the context leaves for it."""
    from transformers import AutoConfig

    from ..models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(model, revision)

    def count(messages: list[dict]) -> int:
        return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])

    context = getattr(
        AutoConfig.from_pretrained(resolve_model(model), revision=revision), "max_position_embeddings", 0
    )
    return count, (context - max_new_tokens if context else None)
