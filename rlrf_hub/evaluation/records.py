"""Reading benchmark data (local files, saved datasets, Hub ids) and writing per-item outputs as a dataset folder."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .results import TaskResult


@dataclass
class Records:
    """Rows of a benchmark and where they came from, as the results will name it."""

    rows: list[dict]
    dataset_id: str
    revision: str | None
    split: str | None


@dataclass
class TaskOutcome:
    """What one benchmark produced: its numbers, its per-item tables (`name -> (rows, datasets.Features)`) and
    further JSON files (`file name -> payload`) to save next to them."""

    results: list[TaskResult]
    tables: dict[str, tuple[list[dict], object]]
    files: dict[str, object] = field(default_factory=dict)


def load_records(
    source: str | Path, split: str = "test", config: str | None = None, revision: str | None = None
) -> Records:
    """Rows of a `.jsonl`/`.json`/`.parquet` file, a dataset folder, or a Hub dataset id.

    A local file is named by its path and, as revision, the start of its sha256, so two runs on different
    copies cannot be mistaken for each other. A Hub dataset is named by its id and the revision asked for.
    """
    path = Path(source)
    if path.is_file():
        return Records(_read_file(path), str(source), f"sha256:{file_digest(path)[:16]}", None)
    if path.is_dir():
        return Records(_read_folder(path, split), str(source), None, split)
    if str(source).startswith((".", "/")) or str(source).endswith((".json", ".jsonl", ".parquet")):
        raise FileNotFoundError(f"{source} does not exist")
    from datasets import load_dataset

    try:
        dataset = load_dataset(str(source), config, split=split, revision=revision)
    except Exception as err:
        raise ValueError(f"cannot load dataset {str(source)!r} (split {split!r}): {err}") from None
    return Records(list(dataset), str(source), revision, split)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_file(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        from datasets import Dataset

        return list(Dataset.from_parquet(str(path)))
    try:
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ValueError(f"{path} must hold a JSON list of objects (or be a .jsonl file)")
    return data


def _read_folder(path: Path, split: str) -> list[dict]:
    from datasets import DatasetDict, load_dataset, load_from_disk

    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        dataset = load_from_disk(str(path))
        if isinstance(dataset, DatasetDict):
            if split not in dataset:
                raise ValueError(f"{path} has no split {split!r} (it has {sorted(dataset)})")
            dataset = dataset[split]
        return list(dataset)
    loaded = load_dataset(str(path))
    if split not in loaded:
        if len(loaded) != 1:
            raise ValueError(f"{path} has no split {split!r} (it has {sorted(loaded)})")
        split = next(iter(loaded))
    return list(loaded[split])


def require_fields(row: dict, fields: Sequence[str], where: str) -> None:
    """One clear error naming the first missing field and where the row came from."""
    for name in fields:
        if name not in row or row[name] is None:
            raise ValueError(f"{where}: missing field {name!r} (fields present: {sorted(row)})")


def save_tables(folder: Path, tables: dict[str, tuple[list[dict], object]]) -> list[Path]:
    """Write each table as `<folder>/<name>/<name>.parquet`, so that `load_dataset("<folder>/<name>")` reads it.

    `tables` maps a table name to its rows and `datasets.Features`. One plain folder per table rather than one
    folder with a card listing `configs`: `datasets` caches configs declared in a card under a key that does
    not depend on the files' content, so a second run written to a folder of the same name would load the
    first run's rows. An empty table is not written (`datasets` cannot load a folder without rows).
    """
    from datasets import Dataset

    written = []
    for name, (rows, features) in tables.items():
        if not rows:
            continue
        target = Path(folder) / name
        target.mkdir(parents=True, exist_ok=True)
        columns = {column: [row[column] for row in rows] for column in features}
        Dataset.from_dict(columns, features=features).to_parquet(str(target / f"{name}.parquet"))
        written.append(target)
    return written
