"""Crash-safe progress of a stage: rows are appended in parquet parts, each written atomically.

A killed run restarted with the same command reads the parts back, skips the work they cover and
continues; the stage's published dataset is built from the parts once the stage is complete. With a
mirror (the Hub publisher's), the parts are also pushed to the stage's repo, and a restart on a machine
without them pulls them first.

A worker of a sharded run (`rlrf_hub.sharding`) names its parts `part-s<i>of<N>-<k>.parquet`, pulls back only its
own on a restart, marks each finished share with a small JSON file (`mark_done`) and pulls everyone's parts when
the shares are to be merged (`pull_all`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from datasets import Dataset, concatenate_datasets

from .publishing import CheckpointMirror
from .schemas import FEATURES
from .sharding import Shard


class StageCheckpoint:
    def __init__(self, folder: Path, stage: str, mirror: CheckpointMirror | None = None, shard: Shard | None = None):
        self.folder = Path(folder)
        self.stage = stage
        self.mirror = mirror
        self.shard = shard or Shard()
        self._rows: list[dict] | None = None
        if self.shard.sharded and mirror is None:
            raise ValueError(f"shard {self.shard}: the workers of a sharded run share their work through a Hub")
        if mirror is not None:
            if self.shard.sharded:
                mirror.pull(self.folder, keep=self.shard.owns)
            else:
                mirror.pull(self.folder)

    @property
    def _prefix(self) -> str:
        return f"part-{self.shard.tag}-" if self.shard.sharded else "part-"

    def _parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []

    def _own_parts(self) -> list[Path]:
        return sorted(self.folder.glob(f"{self._prefix}*.parquet")) if self.folder.is_dir() else []

    def rows(self) -> list[dict]:
        """Every checkpointed row: this worker's, and those pulled from the other workers."""
        if self._rows is None:
            parts = [Dataset.from_parquet(str(p), features=FEATURES[self.stage]) for p in self._parts()]
            self._rows = list(concatenate_datasets(parts)) if parts else []
        return list(self._rows)

    def done(self, key: str) -> set[str]:
        return {row[key] for row in self.rows()}

    def own_rows(self) -> int:
        """How many rows this worker's parts hold."""
        return sum(Dataset.from_parquet(str(p), features=FEATURES[self.stage]).num_rows for p in self._own_parts())

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        from .schemas import to_dataset

        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"{self._prefix}{len(self._own_parts()):05d}.parquet"
        tmp = target.with_suffix(".tmp")
        to_dataset(self.stage, rows).to_parquet(str(tmp))
        os.replace(tmp, target)
        self._rows = self.rows() + rows
        if self.mirror is not None:
            self.mirror.push(self.folder)

    def write_json(self, name: str, value) -> None:
        """Keep a small file with the parts (atomically); a sharded worker pushes it at once for the others."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"{name}.tmp"
        tmp.write_text(json.dumps(value, indent=1))
        os.replace(tmp, self.folder / name)
        if self.mirror is not None:
            self.mirror.push(self.folder, force=self.shard.sharded)

    def read_json(self, name: str):
        path = self.folder / name
        return json.loads(path.read_text()) if path.is_file() else None

    def mark_done(self, step: str, info: dict) -> None:
        """This worker's share of `step` is complete: push its last parts with the marker, in one commit."""
        self.write_json(self.shard.marker(step), {"shard": str(self.shard), **info})

    def markers(self, step: str) -> dict[str, dict]:
        """The markers of `step` present here, by worker tag."""
        found = {s.tag: self.read_json(s.marker(step)) for s in self.shard.workers()}
        return {tag: marker for tag, marker in found.items() if marker is not None}

    def remote_names(self) -> set[str]:
        return set(self.mirror.names()) if self.mirror is not None else set()

    def pull_all(self) -> None:
        """Fetch every worker's files from the mirror, to merge the shares."""
        if self.mirror is not None:
            self.mirror.pull(self.folder)
        self._rows = None

    def clear(self, local_only: bool = False) -> None:
        """The stage is published: drop its parts here and (unless `local_only`) on the mirror."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self._rows = None
        if self.mirror is not None and not local_only:
            self.mirror.discard()
