"""Where the artifacts of a run go. One small interface; stages never know which implementation they got.

`FolderPublisher` lays each stage out as a Hub dataset repo (parquet shards under `data/` plus a
README card with `configs` metadata) under `<output_dir>/iter-<t>/<stage>/`, so
`datasets.load_dataset(<folder>, split="train")` reads it; adapters go to `<output_dir>/adapters/M<t>/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from datasets import Dataset, load_dataset

from .cards import adapter_card, dataset_card
from .schemas import FEATURES, to_dataset

OFFLINE_STORE_FILE = "hub.json"


@dataclass(frozen=True)
class Published:
    """Where an artifact went. `content_key` is the key of the inputs it was made from (see `stage_keys`)."""

    kind: str  # "dataset" or "adapter"
    name: str  # stage name, or "M<t>" for adapters
    iteration: int
    location: str
    revision: str
    content_key: str | None = None


class CheckpointMirror(Protocol):
    """A copy of a stage's unfinished work somewhere other machines can read it."""

    def names(self) -> list[str]: ...
    def pull(self, folder: Path, keep: Callable[[str], bool] | None = None) -> None: ...
    def push(self, folder: Path, force: bool = False) -> None: ...
    def discard(self) -> None: ...


class Publisher(Protocol):
    def find(self, stage: str, iteration: int) -> Published | None: ...
    def load(self, stage: str, iteration: int) -> Dataset: ...
    def publish_dataset(self, stage: str, iteration: int, rows: list[dict], lineage: dict) -> Published: ...
    def checkpoint_mirror(self, stage: str, iteration: int, key: str) -> CheckpointMirror | None: ...
    def adapter_dir(self, model_index: int) -> Path: ...
    def find_adapter(self, model_index: int) -> Published | None: ...
    def publish_adapter(self, model_index: int, lineage: dict, metrics: dict, settings: dict) -> Published: ...
    def record(self, published: Published) -> None: ...
    def check(self) -> None: ...


def offline_store(output_dir: Path) -> Path | None:
    """The offline Hub store a run published to, as its `hub.json` records; None for any other run."""
    path = Path(output_dir) / OFFLINE_STORE_FILE
    return Path(json.loads(path.read_text())["store"]) if path.is_file() else None


def card_content_key(card_path: Path) -> str | None:
    """The `rlrf.content_key` of a card's metadata, if the card has one."""
    from huggingface_hub import metadata_load

    metadata = metadata_load(card_path) if card_path.is_file() else None
    return ((metadata or {}).get("rlrf") or {}).get("content_key")


def _content_sha(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:40]


def write_stage_folder(target: Path, stage: str, rows: list[dict], lineage: dict, load_path: str) -> None:
    """Lay a stage out at `target` as a Hub dataset repo: one parquet shard under `data/` and the README card.

    Shards and card are written into a temporary sibling, then renamed: readers never see half a stage.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stage}-", dir=target.parent))
    try:
        (tmp / "data").mkdir()
        shard = tmp / "data" / "train.parquet"
        to_dataset(stage, rows).to_parquet(str(shard))
        pattern = f"data/train-{_content_sha([shard])[:16]}-*"
        shard.rename(tmp / pattern.replace("*", "00000-of-00001.parquet"))
        dataset_card(lineage, rows, load_path, pattern).save(tmp / "README.md")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def record_published(path: Path, published: Published, **details) -> None:
    """Keep `path` (a run's `published.json`) listing every artifact, for scripts that look for a run's outputs.

    `details` (for example a Hub repo, its type and tag) are stored next to the `Published` fields. An artifact
    recorded again (a resumed run finding it) keeps its place, so the file changes only when its content does.
    """
    entries = json.loads(path.read_text()) if path.is_file() else []
    entry = {**asdict(published), **details}
    key = (published.kind, published.name, published.iteration)
    places = [i for i, e in enumerate(entries) if (e["kind"], e["name"], e["iteration"]) == key]
    if places:
        entries[places[0]] = entry
        entries = [e for i, e in enumerate(entries) if i not in places[1:]]
    else:
        entries.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=2))
    os.replace(tmp, path)


class FolderPublisher:
    """Publishes into a local folder; the revision of a dataset or adapter is a hash of its content."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def check(self) -> None:
        """Nothing to ask: the run's lock on `output_dir` has already shown that the folder can be written."""

    def dataset_dir(self, stage: str, iteration: int) -> Path:
        """Prompts serve every iteration and live at the top; the other stages under `iter-<t>/`."""
        if stage == "prompts":
            return self.root / "prompts"
        return self.root / f"iter-{iteration}" / stage

    def adapter_dir(self, model_index: int) -> Path:
        return self.root / "adapters" / f"M{model_index}"

    def find(self, stage: str, iteration: int) -> Published | None:
        folder = self.dataset_dir(stage, iteration)
        shards = sorted((folder / "data").glob("train-*.parquet"))
        if not (folder / "README.md").is_file() or not shards:
            return None
        key = card_content_key(folder / "README.md")
        return Published("dataset", stage, iteration, str(folder), _content_sha(shards), key)

    def load(self, stage: str, iteration: int) -> Dataset:
        return load_dataset(str(self.dataset_dir(stage, iteration)), split="train", features=FEATURES[stage])

    def publish_dataset(self, stage: str, iteration: int, rows: list[dict], lineage: dict) -> Published:
        target = self.dataset_dir(stage, iteration)
        write_stage_folder(target, stage, rows, lineage, str(target))
        published = self.find(stage, iteration)
        self.record(published)
        return published

    def checkpoint_mirror(self, stage: str, iteration: int, key: str) -> None:
        """Local folders have no remote copy: the checkpoint under `output_dir` is the only one."""
        return None

    def find_adapter(self, model_index: int) -> Published | None:
        folder = self.adapter_dir(model_index)
        weights = sorted(folder.glob("adapter_model.*"))
        if not weights or not (folder / "README.md").is_file():
            return None
        key = card_content_key(folder / "README.md")
        return Published("adapter", f"M{model_index}", model_index, str(folder), _content_sha(weights), key)

    def publish_adapter(self, model_index: int, lineage: dict, metrics: dict, settings: dict) -> Published:
        """The trainer wrote the adapter into `adapter_dir`; the card completes it."""
        folder = self.adapter_dir(model_index)
        card = adapter_card(lineage, metrics, settings, str(folder))
        tmp = folder / "README.md.tmp"
        card.save(tmp)
        os.replace(tmp, folder / "README.md")
        published = self.find_adapter(model_index)
        self.record(published)
        return published

    def record(self, published: Published) -> None:
        """List `published` in `published.json`."""
        record_published(self.root / "published.json", published)
