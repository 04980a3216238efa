"""Training mixtures for the SFT and reward-model scripts: several datasets, each mapped to one row shape.

A mixture is a list of sources (`dataset_mixture` in a recipe). Each source names a Hub dataset (`id`, with
`config`, `split`, `revision`, `data_dir`) or a local file or folder (`path`), says how its rows are laid out
(`format`) and which of its columns play which part (`fields`), and how much of it to take (`limit` rows, or a
`fraction` of the mixture with TRL's `get_dataset` semantics: shares normalised to one, no source oversampled).

Every source becomes rows of one shape, so the sources can be concatenated:

- SFT rows (`kind="sft"`): `prompt` (the conversation so far) and `completion` (the final assistant message), so
  that `SFTTrainer` computes the loss on the answer only and never learns to write the long judge prompts.
- Preference rows (`kind="preference"`): `chosen` and `rejected`, each a whole conversation ending with the
  assistant's turn (TRL's conversational format with an implicit prompt), as `RewardTrainer` reads them and as
  `rlrf_hub.reward.RewardScorer` later scores (prompt, response) pairs.

The `rlrf_*` formats turn the stage datasets of an RLRF run (this project's own output) into examples for the
feedback model, in exactly the prompts and JSON reply the loop's judge uses (`rlrf_hub.feedback.templates`):
`rlrf_feedback` (rate a response), `rlrf_selection` (pick the aspects a prompt needs) and `rlrf_refinements`
(revise an answer given feedback). Point them at a run whose judge was strong (e.g. a large model), to distil it,
as the paper distils GPT-4 feedback and refinements.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .schemas import MESSAGES

SFT_FORMATS = ("messages", "prompt_response", "transcript", "rlrf_feedback", "rlrf_selection", "rlrf_refinements")
PREFERENCE_FORMATS = ("preference", "pairwise")
KINDS = {"sft": SFT_FORMATS, "preference": PREFERENCE_FORMATS}
DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
FIELD_DEFAULTS: dict[str, dict[str, str]] = {
    "messages": {"messages": "messages"},
    "prompt_response": {"prompt": "prompt", "response": "response"},
    "transcript": {"text": "text"},
    "preference": {"chosen": "chosen", "rejected": "rejected"},
    "pairwise": {"prompt": "prompt", "response_a": "response_a", "response_b": "response_b"},
}
FIELD_NAMES: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "prompt_response": ("prompt", "response", "system"),
    "transcript": ("text",),
    "preference": ("prompt", "chosen", "rejected"),
    "pairwise": ("prompt", "response_a", "response_b", "label", "score_a", "score_b"),
}
ROLES = {
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}
JUDGE_STATUSES = ("strict", "tolerant")
_TURN = re.compile(r"\n\n(Human|Assistant):")


class MixtureError(ValueError):
    """A mixture source is wrong; the message names `dataset_mixture[i].<field>`."""


@dataclass
class MixtureSource:
    """One dataset of a training mixture.

    Parameters:
        id: a Hub dataset id; for the `rlrf_*` formats the run's Hub prefix `<namespace>/<run_name>` (its stages
            are the repos `<namespace>/<run_name>-<stage>`, tagged `iter-<t>`).
        path: instead of `id`, a local `.jsonl`/`.json`/`.parquet`/`.csv` file, a data folder, a `save_to_disk`
            folder, or for the `rlrf_*` formats a run's `output_dir`.
        config / split / revision / data_dir: passed to `datasets.load_dataset`.
        format: how the rows are laid out. SFT: `messages` (a chat column, `{role, content}` or ShareGPT's
            `{from, value}` turns), `prompt_response` (prompt and response columns, optional system column),
            `transcript` (`"\\n\\nHuman: ...\\n\\nAssistant: ..."` text, as in HH-RLHF), `rlrf_feedback`,
            `rlrf_selection`, `rlrf_refinements`. Preference: `preference` (chosen and rejected columns, each a
            chat, a transcript, or a response string with a `prompt` column) or `pairwise` (two responses and
            either a `label` column, true/1 when `response_a` is preferred, or `score_a`/`score_b` columns, the
            higher preferred, ties dropped).
        fields: role -> column, e.g. `{prompt: question, response: answer}`; a dotted path reaches into nested
            values (`question.full_text`, `instances.0.output`). Unset roles use the role's own name as column.
        limit: keep the first `limit` rows of the source (before conversion).
        fraction: the source's share of the mixture (set for all sources or none; see the module docstring).
        iteration: for `rlrf_*`: which iteration's stages to read.
        only_positive: for `rlrf_refinements`: only refinements the judge rated 1 on every aspect.
    """

    id: str | None = None
    path: str | None = None
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    data_dir: str | None = None
    format: str = "messages"
    fields: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    fraction: float | None = None
    iteration: int = 0
    only_positive: bool = True

    @property
    def name(self) -> str:
        return self.id or str(self.path)


def as_sources(values: list[Any], kind: str) -> list[MixtureSource]:
    """Validate recipe mappings (or `MixtureSource`s) for a mixture of `kind` (`sft` or `preference`)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if not values:
        raise MixtureError("dataset_mixture: at least one source is required")
    sources = [_as_source(value, i, kind) for i, value in enumerate(values)]
    with_fraction = [s.fraction is not None for s in sources]
    if any(with_fraction) and not all(with_fraction):
        raise MixtureError("dataset_mixture: set `fraction` for every source or for none")
    return sources


def _as_source(value: Any, index: int, kind: str) -> MixtureSource:
    where = f"dataset_mixture[{index}]"
    if isinstance(value, MixtureSource):
        value = dataclasses.asdict(value)
    if not isinstance(value, dict):
        raise MixtureError(f"{where} must be a mapping with `id` or `path` and a `format`, got {value!r}")
    known = {f.name for f in dataclasses.fields(MixtureSource)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise MixtureError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    source = MixtureSource(**value)
    if bool(source.id) == bool(source.path):
        raise MixtureError(f"{where}: give exactly one of `id` (a Hub dataset) or `path` (local), got both or none")
    if source.format not in KINDS[kind]:
        raise MixtureError(f"{where}.format: must be one of {KINDS[kind]} for this script, got {source.format!r}")
    allowed = FIELD_NAMES.get(source.format, ())
    if not isinstance(source.fields, dict):
        raise MixtureError(f"{where}.fields: must map roles to columns, got {source.fields!r}")
    extra = sorted(set(source.fields) - set(allowed))
    if extra:
        raise MixtureError(f"{where}.fields: unknown role(s) {extra} for format {source.format!r}; roles: {allowed}")
    if source.format == "pairwise":
        has_label = "label" in source.fields
        has_scores = "score_a" in source.fields and "score_b" in source.fields
        if has_label == has_scores:
            raise MixtureError(f"{where}.fields: `pairwise` needs either `label` or both `score_a` and `score_b`")
    if source.limit is not None and source.limit < 1:
        raise MixtureError(f"{where}.limit: must be >= 1, got {source.limit}")
    if source.fraction is not None and source.fraction <= 0:
        raise MixtureError(f"{where}.fraction: must be > 0, got {source.fraction}")
    return source


def load_mixture(values: list[Any], kind: str):
    """The concatenated training `datasets.Dataset` of a mixture: SFT rows or preference rows (module docstring)."""
    from datasets import Dataset, Features, concatenate_datasets

    sources = as_sources(values, kind)
    columns = ("prompt", "completion") if kind == "sft" else ("chosen", "rejected")
    features = Features({name: MESSAGES for name in columns})
    parts = []
    for index, source in enumerate(sources):
        rows = _source_rows(source, f"dataset_mixture[{index}]")
        if not rows:
            raise MixtureError(f"dataset_mixture[{index}]: {source.name} gave no usable row")
        parts.append(Dataset.from_list(rows, features=features))
    if sources[0].fraction is not None:
        parts = _apply_fractions(parts, [s.fraction for s in sources])
    return concatenate_datasets(parts)


def _apply_fractions(parts: list, fractions: list[float]) -> list:
    weights = [f / sum(fractions) for f in fractions]
    total = min(len(part) / weight for part, weight in zip(parts, weights, strict=True))
    return [part.select(range(round(weight * total))) for part, weight in zip(parts, weights, strict=True)]


def _source_rows(source: MixtureSource, where: str) -> list[dict]:
    if source.format.startswith("rlrf_"):
        rows = _RLRF_CONVERTERS[source.format](_RunStages(source, where), source)
        return rows[: source.limit] if source.limit else rows
    dataset = load_source(source, where)
    if source.limit is not None:
        dataset = dataset.select(range(min(source.limit, len(dataset))))
    fields = {**FIELD_DEFAULTS.get(source.format, {}), **source.fields}
    convert = _ROW_CONVERTERS[source.format]
    rows = []
    for i, record in enumerate(dataset):
        try:
            row = convert(record, fields)
        except KeyError as err:
            raise MixtureError(f"{where}.fields: row {i} of {source.name} has no column {err.args[0]!r}") from None
        if row is not None:
            rows.append(row)
    return rows


def load_source(source: MixtureSource, where: str = "dataset_mixture"):
    """The raw rows of a source: a Hub dataset, a data file, a data folder or a `save_to_disk` folder."""
    from datasets import load_dataset, load_from_disk

    if source.id:
        return load_dataset(
            source.id, name=source.config, split=source.split, revision=source.revision, data_dir=source.data_dir
        )
    path = Path(source.path)
    if not path.exists():
        raise MixtureError(f"{where}.path: {path} does not exist")
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        dataset = load_from_disk(str(path))
        return dataset[source.split] if hasattr(dataset, "keys") else dataset
    if path.is_file():
        builder = DATA_FILE_BUILDERS.get(path.suffix)
        if builder is None:
            raise MixtureError(f"{where}.path: cannot read {path}; use one of {sorted(DATA_FILE_BUILDERS)}")
        return load_dataset(builder, data_files=str(path), split="train")
    return load_dataset(str(path), name=source.config, split=source.split, data_dir=source.data_dir)


def lookup(record: dict, path: str) -> Any:
    """`record[a][b]...` for a dotted path `a.b...`; a numeric part indexes a list. A missing part is a KeyError."""
    value: Any = record
    for part in path.split("."):
        if isinstance(value, dict):
            if part not in value:
                raise KeyError(path)
            value = value[part]
        elif isinstance(value, (list, tuple)) and part.lstrip("-").isdigit():
            try:
                value = value[int(part)]
            except IndexError:
                raise KeyError(path) from None
        else:
            raise KeyError(path)
    return value


def normalise_messages(value: Any) -> list[dict[str, str]]:
    """Chat turns as `[{role, content}]` from `{role, content}`, ShareGPT `{from, value}` or columnar turns."""
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        keys = list(value)
        value = [dict(zip(keys, items, strict=True)) for items in zip(*value.values(), strict=True)]
    messages = []
    for turn in value or []:
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        role = ROLES.get(str(role).lower())
        if role is None or not isinstance(content, str):
            return []
        messages.append({"role": role, "content": content})
    return messages


def parse_transcript(text: str) -> list[dict[str, str]]:
    """An HH-RLHF transcript (`"\\n\\nHuman: ...\\n\\nAssistant: ..."`) as chat turns; `[]` when it is not one."""
    if not isinstance(text, str):
        return []
    parts = _TURN.split("\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    if len(parts) < 3 or parts[0].strip():
        return []
    turns = zip(parts[1::2], parts[2::2], strict=True)
    return [{"role": "user" if who == "Human" else "assistant", "content": body.strip()} for who, body in turns]


def split_last_answer(messages: list[dict[str, str]]) -> dict | None:
    """`{prompt, completion}` with the last assistant turn as the completion; None without a user turn before it."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or not messages[last]["content"].strip():
        return None
    prompt = messages[:last]
    if not any(m["role"] == "user" for m in prompt):
        return None
    return {"prompt": prompt, "completion": [messages[last]]}


def _as_chat(value: Any, role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return normalise_messages(value)


def _messages_row(record: dict, fields: dict) -> dict | None:
    return split_last_answer(normalise_messages(lookup(record, fields["messages"])))


def _prompt_response_row(record: dict, fields: dict) -> dict | None:
    prompt = _as_chat(lookup(record, fields["prompt"]), "user")
    response = lookup(record, fields["response"])
    if not prompt or not isinstance(response, str) or not response.strip():
        return None
    system = [{"role": "system", "content": lookup(record, fields["system"])}] if fields.get("system") else []
    return {"prompt": system + prompt, "completion": [{"role": "assistant", "content": response}]}


def _transcript_row(record: dict, fields: dict) -> dict | None:
    return split_last_answer(parse_transcript(lookup(record, fields["text"])))


def _conversation(prompt: Any, response: Any) -> list[dict[str, str]]:
    """A whole conversation ending with the assistant's turn, from a response (chat, transcript or text) and an
    optional prompt (chat or text)."""
    if prompt is None:
        turns = parse_transcript(response) if isinstance(response, str) else normalise_messages(response)
    else:
        turns = _as_chat(prompt, "user") + _as_chat(response, "assistant")
    if not turns or turns[-1]["role"] != "assistant" or not turns[-1]["content"].strip():
        return []
    return turns if any(t["role"] == "user" for t in turns) else []


def _preference_row(record: dict, fields: dict) -> dict | None:
    prompt = lookup(record, fields["prompt"]) if "prompt" in fields else None
    chosen = _conversation(prompt, lookup(record, fields["chosen"]))
    rejected = _conversation(prompt, lookup(record, fields["rejected"]))
    if not chosen or not rejected or chosen == rejected:
        return None
    return {"chosen": chosen, "rejected": rejected}


def _pairwise_row(record: dict, fields: dict) -> dict | None:
    if "label" in fields:
        a_wins = bool(lookup(record, fields["label"]))
    else:
        score_a, score_b = lookup(record, fields["score_a"]), lookup(record, fields["score_b"])
        if score_a is None or score_b is None or score_a == score_b:
            return None
        a_wins = score_a > score_b
    a, b = lookup(record, fields["response_a"]), lookup(record, fields["response_b"])
    chosen, rejected = (a, b) if a_wins else (b, a)
    return _preference_row({"p": lookup(record, fields["prompt"]), "c": chosen, "r": rejected}, _PAIRWISE_AS_PREF)


_PAIRWISE_AS_PREF = {"prompt": "p", "chosen": "c", "rejected": "r"}
_ROW_CONVERTERS = {
    "messages": _messages_row,
    "prompt_response": _prompt_response_row,
    "transcript": _transcript_row,
    "preference": _preference_row,
    "pairwise": _pairwise_row,
}


class _RunStages:
    """The stage datasets of one iteration of an RLRF run, from its `output_dir` or from a Hub."""

    def __init__(self, source: MixtureSource, where: str):
        self.source, self.where = source, where

    def load(self, stage: str) -> list[dict]:
        from datasets import load_dataset

        t = 0 if stage == "prompts" else self.source.iteration
        if self.source.id:
            return list(load_dataset(f"{self.source.id}-{stage}", revision=f"iter-{t}", split="train"))
        root = Path(self.source.path)
        folder = root / "prompts" if stage == "prompts" else root / f"iter-{t}" / stage
        if not (folder / "README.md").is_file():
            raise MixtureError(f"{self.where}.path: {folder} is not a published stage of an RLRF run")
        return list(load_dataset(str(folder), split="train"))

    def responses(self) -> dict[str, dict]:
        rows = self.load("candidates")
        try:
            rows += self.load("refinements")
        except (MixtureError, FileNotFoundError, ValueError):
            pass
        return {row["response_id"]: row for row in rows}


def _judged(feedback: list[dict]) -> list[dict]:
    """Feedback rows written by the judge (not by the verifier, not failed, not unrated)."""
    return [row for row in feedback if row["parse_status"] in JUDGE_STATUSES and row["aspects"]]


def _rlrf_feedback_rows(stages: _RunStages, source: MixtureSource) -> list[dict]:
    from .feedback.templates import dump_ratings, rating_messages

    prompts = {row["prompt_id"]: row for row in stages.load("prompts")}
    responses = stages.responses()
    rows = []
    for row in _judged(stages.load("feedback")):
        response = responses.get(row["response_id"])
        if response is None:
            continue
        reference = prompts.get(row["prompt_id"], {}).get("reference")
        messages = rating_messages(response["prompt"], response["response"], row["aspects"], reference)
        reply = dump_ratings(row["aspects"], row["ratings"], row["critiques"])
        rows.append({"prompt": messages, "completion": [{"role": "assistant", "content": reply}]})
    return rows


def _rlrf_selection_rows(stages: _RunStages, source: MixtureSource) -> list[dict]:
    """One example per general prompt: the aspects its feedback was rated on, in the judge's order.

    Prompts whose aspects equal the fallback the loop uses when the judge's choice does not parse are left out:
    they may not be the judge's choice at all.
    """
    from .feedback.judge import GENERAL_FALLBACK
    from .feedback.templates import selection_messages

    prompts = {row["prompt_id"]: row for row in stages.load("prompts")}
    chosen: dict[str, list[str]] = {}
    for row in _judged(stages.load("feedback")):
        if row["task"] == "general" and row["prompt_id"] in prompts:
            chosen.setdefault(row["prompt_id"], list(row["aspects"]))
    rows = []
    for prompt_id, aspects in sorted(chosen.items()):
        if aspects == list(GENERAL_FALLBACK[: len(aspects)]):
            continue
        messages = selection_messages(prompts[prompt_id]["prompt"], len(aspects))
        reply = json.dumps({"aspects": aspects})
        rows.append({"prompt": messages, "completion": [{"role": "assistant", "content": reply}]})
    return rows


def _rlrf_refinement_rows(stages: _RunStages, source: MixtureSource) -> list[dict]:
    """The reflection prompt each refinement answered, and the refinement (only positive ones by default)."""
    positive = {row["response_id"] for row in stages.load("feedback") if row["is_positive"]}
    rows = []
    for row in stages.load("refinements"):
        if source.only_positive and row["response_id"] not in positive:
            continue
        if not row["messages"] or not row["response"].strip():
            continue
        prompt = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": row["response"]}]})
    return rows


_RLRF_CONVERTERS = {
    "rlrf_feedback": _rlrf_feedback_rows,
    "rlrf_selection": _rlrf_selection_rows,
    "rlrf_refinements": _rlrf_refinement_rows,
}
