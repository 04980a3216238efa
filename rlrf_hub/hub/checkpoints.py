"""Unfinished stages on the Hub: checkpoint parts pushed to a `checkpoints/iter-<t>` branch of the stage's repo.

A run restarted on another machine, with empty caches, pulls the parts back and continues the stage where the
crashed run left it. Pushes are batched (at most one commit per `interval` seconds, the Hub allows 128 commits
per hour per repo) and the branch is deleted once the stage is published, so `main` and the `iter-<t>` tags only
ever hold finished stages.

Sharded runs (`--shard i/N`) share the branch: each worker's files carry its tag in their names, so they never
collide, a restarted worker pulls back only its own (`pull(keep=...)`), and the workers watch the branch's file
list (`names()`) for each other's completion markers.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

PREFIX = "checkpoint/"


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
