"""Crash-safe progress of a stage: rows are appended in parquet parts, each written atomically.

A killed run restarted with the same command reads the parts back, skips the work they cover and
continues; the stage's published dataset is built from the parts once the stage is complete. With a
mirror (the Hub publisher's), the parts are also pushed to the stage's repo, and a restart on a machine
without them pulls them first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from datasets import Dataset, concatenate_datasets

from .publishing import CheckpointMirror
from .schemas import FEATURES


class StageCheckpoint:
    def __init__(self, folder: Path, stage: str, mirror: CheckpointMirror | None = None):
        self.folder = Path(folder)
        self.stage = stage
        self.mirror = mirror
        self._rows: list[dict] | None = None
        if mirror is not None:
            mirror.pull(self.folder)

    def _parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []

    def rows(self) -> list[dict]:
        if self._rows is None:
            parts = [Dataset.from_parquet(str(p), features=FEATURES[self.stage]) for p in self._parts()]
            self._rows = list(concatenate_datasets(parts)) if parts else []
        return list(self._rows)

    def done(self, key: str) -> set[str]:
        return {row[key] for row in self.rows()}

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        from .schemas import to_dataset

        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"part-{len(self._parts()):05d}.parquet"
        tmp = target.with_suffix(".tmp")
        to_dataset(self.stage, rows).to_parquet(str(tmp))
        os.replace(tmp, target)
        self._rows = self.rows() + rows
        if self.mirror is not None:
            self.mirror.push(self.folder)

    def clear(self) -> None:
        """The stage is published: drop its parts here and on the mirror."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self._rows = None
        if self.mirror is not None:
            self.mirror.discard()
