"""Crash-safe progress of a stage: rows are appended in parquet parts, each written atomically.

A killed run restarted with the same command reads the parts back, skips the work they cover and
continues; the stage's published dataset is built from the parts once the stage is complete. With a
mirror (the Hub publisher's), the parts are also pushed to the stage's repo, and a restart on a machine
without them pulls them first.

A worker of a sharded run (`rlrf_hub.sharding`) names its parts `part-s<i>of<N>-<k>.parquet`, pulls back only its
own on a restart, marks each finished share with a small JSON file (`mark_done`) and pulls everyone's parts when
the shares are to be merged (`pull_all`).

On a Hub (`HubCheckpointMirror`) the parts go to a `checkpoints/iter-<t>-<key>` branch of the stage's repo. Pushes
are batched (at most one commit per `interval` seconds; the Hub allows 128 commits per hour per repo) and the branch
is deleted once the stage is published, so `main` and the `iter-<t>` tags only ever hold finished stages. The
workers of a sharded run share the branch: their files carry their tags, so they never collide, and each watches
the branch's file list (`names()`) for the others' completion markers.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from datasets import Dataset, concatenate_datasets
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

from ..schemas import FEATURES, to_dataset
from ..sharding import Shard
from .base import CheckpointMirror

PREFIX = "checkpoint/"


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


def checkpoint_branch(iteration: int) -> str:
    return f"checkpoints/iter-{iteration}"


class HubCheckpointMirror:
    def __init__(self, api: HfApi, repo_id: str, repo_type: str, branch: str, interval: float):
        self.api, self.repo_id, self.repo_type, self.branch = api, repo_id, repo_type, branch
        self.interval = interval
        self._pushed: set[str] = set()
        self._last_push = float("-inf")

    def names(self) -> list[str]:
        """The checkpoint files on the branch; none when the branch (or the repo) does not exist."""
        try:
            files = self.api.list_repo_files(self.repo_id, repo_type=self.repo_type, revision=self.branch)
        except (RepositoryNotFoundError, RevisionNotFoundError):
            return []
        return [path[len(PREFIX) :] for path in files if path.startswith(PREFIX)]

    def pull(self, folder: Path, keep: Callable[[str], bool] | None = None) -> None:
        """Download the files the branch has and `folder` lacks (a restart elsewhere, or after losing the disk);
        with `keep`, only those whose name it accepts."""
        names = self.names()
        self._pushed = set(names)
        folder = Path(folder)
        for name in names:
            if (folder / name).exists() or (keep is not None and not keep(name)):
                continue
            folder.mkdir(parents=True, exist_ok=True)
            cached = self.api.hf_hub_download(
                self.repo_id, PREFIX + name, repo_type=self.repo_type, revision=self.branch
            )
            tmp = folder / f".{name}.download"
            shutil.copyfile(cached, tmp)
            tmp.replace(folder / name)

    def push(self, folder: Path, force: bool = False) -> None:
        """One commit with every finished file of `folder` the branch lacks, unless the last push is too recent."""
        if not force and time.monotonic() - self._last_push < self.interval:
            return
        new = [path for path in _finished_files(Path(folder)) if path.name not in self._pushed]
        if not new:
            return
        self.api.create_repo(self.repo_id, repo_type=self.repo_type, exist_ok=True)
        self.api.create_branch(self.repo_id, branch=self.branch, repo_type=self.repo_type, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=PREFIX + path.name, path_or_fileobj=path) for path in new]
        self.api.create_commit(
            self.repo_id,
            operations,
            commit_message=f"Checkpoint: {len(new)} part(s) of unfinished work",
            repo_type=self.repo_type,
            revision=self.branch,
        )
        self._pushed |= {path.name for path in new}
        self._last_push = time.monotonic()

    def discard(self) -> None:
        try:
            self.api.delete_branch(self.repo_id, branch=self.branch, repo_type=self.repo_type)
        except (RepositoryNotFoundError, RevisionNotFoundError):
            pass
        self._pushed = set()


def _finished_files(folder: Path) -> list[Path]:
    """Files written atomically and complete: not temporaries (`*.tmp`) nor hidden partial downloads."""
    return sorted(p for p in folder.glob("*") if p.is_file() and not p.name.startswith(".") and p.suffix != ".tmp")
