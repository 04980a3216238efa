"""Prompt sources -> the prompts stage: one row per unique prompt with its task and reference."""

from __future__ import annotations

import json
from pathlib import Path

from .config import PromptSource, RecipeError
from .ids import normalise_prompt, prompt_id


def load_records(source: PromptSource, where: str) -> list[dict]:
    """Rows of a `.jsonl`/`.json` file, a folder of them, or a Hub dataset id (through `datasets`)."""
    path = Path(source.path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json"))
        if not files:
            raise RecipeError(f"{where}.path: folder {path} holds no .jsonl or .json file")
        return [row for f in files for row in _read_file(f, where)]
    if path.is_file():
        return _read_file(path, where)
    from datasets import load_dataset

    try:
        dataset = load_dataset(source.path, name=source.name, split=source.split)
    except Exception as err:
        raise RecipeError(f"{where}.path: cannot load dataset {source.path!r}: {err}") from None
    return list(dataset)


def _read_file(path: Path, where: str) -> list[dict]:
    try:
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RecipeError(f"{where}.path: cannot read {path}: {err}") from None
    if not isinstance(data, list):
        raise RecipeError(f"{where}.path: {path} must hold a JSON list of objects")
    return data


def load_reference_texts(path: str) -> dict[str, str]:
    """`{title: text}` or `{title: {"extract": text, ...}}` (the FActScore Wikipedia file's shape)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
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
    references = load_reference_texts(source.reference_file) if source.reference_file else None
    rows = []
    for record in load_records(source, where):
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
    end = None if source.limit is None else source.offset + source.limit
    return rows[source.offset : end]


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
