"""What every publisher shares: where an artifact went (`Published`), the publisher and checkpoint-mirror
interfaces, and the run's `published.json` record."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from datasets import Dataset

OFFLINE_STORE_FILE = "hub.json"


@dataclass(frozen=True)
class Published:
    """Where an artifact went. `content_key` is the key of the inputs it was made from (see `rlrf_hub.stages.keys`)."""

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
    """Where a run's stages, adapters and evaluation results go: plain folders or a Hub."""

    def find(self, stage: str, iteration: int) -> Published | None: ...
    def load(self, stage: str, iteration: int) -> Dataset: ...
    def publish_dataset(
        self, stage: str, iteration: int, rows: list[dict], lineage: dict, description: str
    ) -> Published: ...
    def checkpoint_mirror(self, stage: str, iteration: int, key: str) -> CheckpointMirror | None: ...
    def adapter_dir(self, model_index: int) -> Path: ...
    def find_adapter(self, model_index: int) -> Published | None: ...
    def publish_adapter(self, model_index: int, lineage: dict, metrics: dict, settings: dict) -> Published: ...
    def publish_results(self, model_index: int, reports) -> Published: ...
    def find_results(self, model_index: int, label: str | None = None): ...
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


def content_sha(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:40]


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
