"""A git-like repository store on disk: content-addressed blobs, commit objects, branches and tags.

Layout under `root`:

    store-id                             a random id, how a client tells that a server serves this store
    blobs/<sha256[:2]>/<sha256>          file contents, shared by every repo
    tmp/                                 partial uploads (renamed into blobs/ once their hash is checked)
    repos/<type>s/<repo_id>/commits/<id>.json
    repos/<type>s/<repo_id>/refs/heads/<quoted branch>, refs/tags/<quoted tag>   (a commit id each)
    repos/<type>s/<repo_id>/lock

A commit writes its blobs and its commit object first and only then moves the ref with an atomic rename, under an
exclusive `flock` on the repo's lock file, so a process killed mid-commit leaves the branch where it was and two
writers never interleave (the second one sees a moved branch and gets a `ConflictError` if it named a parent).

Every blob id, repository id, file path and ref name is checked against `validation` here too, not only by the
server, so no caller can make the store read or write outside `root`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .validation import COMMIT_ID, check_oid, check_path, check_ref_name, check_repo_id, ref_file_name

CHUNK_SIZE = 1 << 20
REPO_TYPES = ("model", "dataset")
STORE_ID_FILE = "store-id"
STALE_TMP_S = 3600.0
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n"

# Called after the blobs and the commit object are written and before the ref moves; tests set it to simulate a crash.
before_ref_update: Callable[[str, str], None] | None = None


class StoreError(Exception):
    """Base class; `code` is the Hub's `X-Error-Code` value and `status` the HTTP status."""

    code = "Error"
    status = 400


class RepoNotFoundError(StoreError):
    code, status = "RepoNotFound", 404


class RevisionNotFoundError(StoreError):
    code, status = "RevisionNotFound", 404


class EntryNotFoundError(StoreError):
    code, status = "EntryNotFound", 404


class ConflictError(StoreError):
    code, status = "Conflict", 409


class StaleParentError(StoreError):
    code, status = "PreconditionFailed", 412


@dataclass
class FileEntry:
    """A file of a commit's tree: its blob (`sha256`), `size`, git blob id (`oid`) and whether it is stored by LFS."""

    sha256: str
    size: int
    oid: str
    lfs: bool = False

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()


@dataclass
class Commit:
    id: str
    parents: list[str]
    title: str
    message: str
    date: str
    tree: dict[str, FileEntry] = field(default_factory=dict)

    def to_json(self) -> dict:
        tree = {path: vars(entry) for path, entry in sorted(self.tree.items())}
        fields = {"id": self.id, "parents": self.parents, "title": self.title, "message": self.message}
        return {**fields, "date": self.date, "tree": tree}

    @classmethod
    def from_json(cls, data: dict) -> Commit:
        tree = {path: FileEntry(**entry) for path, entry in data["tree"].items()}
        return cls(data["id"], data["parents"], data["title"], data["message"], data["date"], tree)


@dataclass
class Operation:
    """One change of a commit: `add` (with a stored blob `sha256`), `delete` a file, or `delete_folder`."""

    kind: str
    path: str
    sha256: str = ""
    lfs: bool = False


def git_blob_id(size: int, chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha1(f"blob {size}\0".encode())
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class Store:
    """Repositories of every type under one `root` folder; safe to share between threads and processes."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        for name in ("blobs", "tmp", "repos"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self.id = self._open_id()
        self.remove_stale_tmp()

    def _open_id(self) -> str:
        """The store's random id, created once: `os.link` publishes a complete file or fails if another process
        was first, so two servers opening a new store at once agree on one id."""
        path = self.root / STORE_ID_FILE
        if not path.is_file():
            fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", prefix="store-id-")
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(16))
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        return path.read_text().strip()

    def remove_stale_tmp(self, max_age_s: float = STALE_TMP_S) -> None:
        """Remove what a crashed upload or repo deletion left in `tmp/`, once untouched for `max_age_s`.

        The server drops a client that sends nothing for its idle timeout (a minute), so a partial upload untouched
        for an hour belongs to a writer that is gone or stalled, whichever process sharing the store it was. A
        stalled writer that resumes then fails to move its file into `blobs/`: its upload fails, nothing partial is
        stored.
        """
        cutoff = time.time() - max_age_s
        for entry in (self.root / "tmp").iterdir():
            try:
                if entry.lstat().st_mtime >= cutoff:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
            except FileNotFoundError:
                pass

    # Blobs -----------------------------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        check_oid(sha256)
        return self.root / "blobs" / sha256[:2] / sha256

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def put_blob(self, chunks: Iterable[bytes], expected_sha256: str | None = None) -> tuple[str, int]:
        """Stream `chunks` to a temporary file, hash them, and move the file into place; returns (sha256, size)."""
        if expected_sha256 is not None:
            check_oid(expected_sha256)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha256 = digest.hexdigest()
            if expected_sha256 is not None and sha256 != expected_sha256:
                raise StoreError(f"content hash {sha256} does not match the announced oid {expected_sha256}")
            target = self.blob_path(sha256)
            target.parent.mkdir(exist_ok=True)
            os.replace(tmp, target)
            return sha256, size
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        return self.put_blob([data])

    def iter_blob(self, sha256: str, start: int = 0) -> Iterator[bytes]:
        with open(self.blob_path(sha256), "rb") as blob:
            blob.seek(start)
            while chunk := blob.read(CHUNK_SIZE):
                yield chunk

    def open_blob(self, sha256: str) -> BinaryIO:
        return open(self.blob_path(sha256), "rb")

    # Repos -----------------------------------------------------------------------------------------------------
    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        if repo_type not in REPO_TYPES:
            raise RepoNotFoundError(f"unknown repository type {repo_type!r}")
        return self.root / "repos" / f"{repo_type}s" / check_repo_id(repo_id)

    def repo_exists(self, repo_type: str, repo_id: str) -> bool:
        return (self.repo_dir(repo_type, repo_id) / "refs").is_dir()

    def _require_repo(self, repo_type: str, repo_id: str) -> Path:
        folder = self.repo_dir(repo_type, repo_id)
        if not (folder / "refs").is_dir():
            raise RepoNotFoundError(f"repository {repo_type} {repo_id} not found")
        return folder

    @contextmanager
    def _locked(self, folder: Path) -> Iterator[None]:
        with open(folder / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def create_repo(self, repo_type: str, repo_id: str) -> str:
        """Create a repo whose `main` holds an initial commit with a `.gitattributes`; `ConflictError` if it exists."""
        folder = self.repo_dir(repo_type, repo_id)
        folder.mkdir(parents=True, exist_ok=True)
        with self._locked(folder):
            if (folder / "refs").is_dir():
                raise ConflictError(f"repository {repo_type} {repo_id} already exists")
            (folder / "commits").mkdir(exist_ok=True)
            sha256, size = self.put_bytes(GITATTRIBUTES)
            entry = FileEntry(sha256, size, git_blob_id(size, [GITATTRIBUTES]))
            commit = self._write_commit(folder, [], "initial commit", "", {".gitattributes": entry})
            staging = folder / "refs.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            (staging / "heads").mkdir(parents=True)
            (staging / "tags").mkdir()
            (staging / "heads" / "main").write_text(commit.id)
            os.replace(staging, folder / "refs")
            return commit.id

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        """Move the repo out of `repos/` in one rename, then remove it; its blobs stay (they may be shared)."""
        folder = self._require_repo(repo_type, repo_id)
        trash = Path(tempfile.mkdtemp(dir=self.root / "tmp", prefix="deleted-"))
        with self._locked(folder):
            os.replace(folder, trash / "repo")
        shutil.rmtree(trash, ignore_errors=True)

    def _write_commit(self, folder: Path, parents: list[str], title: str, message: str, tree: dict) -> Commit:
        commit = Commit("", parents, title, message, _now(), tree)
        body = json.dumps(commit.to_json(), sort_keys=True)
        commit.id = hashlib.sha1(body.encode()).hexdigest()
        path = folder / "commits" / f"{commit.id}.json"
        self._atomic_write(path, json.dumps(commit.to_json(), sort_keys=True))
        return commit

    def _atomic_write(self, path: Path, text: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

    # Refs and revisions ----------------------------------------------------------------------------------------
    def _ref_path(self, folder: Path, kind: str, name: str) -> Path:
        file_name = ref_file_name(name)
        if file_name is None:
            raise RevisionNotFoundError("revision not found: the name is too long")
        return folder / "refs" / kind / file_name

    def _read_refs(self, folder: Path, kind: str) -> dict[str, str]:
        from urllib.parse import unquote

        refs = {}
        for path in sorted((folder / "refs" / kind).iterdir()):
            if not path.name.startswith(".tmp-"):
                refs[unquote(path.name)] = path.read_text().strip()
        return refs

    def refs(self, repo_type: str, repo_id: str) -> dict[str, dict[str, str]]:
        folder = self._require_repo(repo_type, repo_id)
        return {"branches": self._read_refs(folder, "heads"), "tags": self._read_refs(folder, "tags")}

    def resolve(self, repo_type: str, repo_id: str, revision: str | None) -> str:
        """Commit id of a branch, tag or commit id (full), or `RevisionNotFoundError`."""
        folder = self._require_repo(repo_type, repo_id)
        revision = revision or "main"
        for kind in ("heads", "tags"):
            path = self._ref_path(folder, kind, revision)
            if path.is_file():
                return path.read_text().strip()
        if COMMIT_ID.fullmatch(revision) and (folder / "commits" / f"{revision}.json").is_file():
            return revision
        raise RevisionNotFoundError(f"revision {revision} not found in {repo_id}")

    def commit(self, repo_type: str, repo_id: str, commit_id: str) -> Commit:
        folder = self._require_repo(repo_type, repo_id)
        path = folder / "commits" / f"{commit_id}.json"
        if not COMMIT_ID.fullmatch(commit_id) or not path.is_file():
            raise RevisionNotFoundError(f"commit {commit_id[:64]} not found in {repo_id}")
        return Commit.from_json(json.loads(path.read_text()))

    def commit_at(self, repo_type: str, repo_id: str, revision: str | None) -> Commit:
        return self.commit(repo_type, repo_id, self.resolve(repo_type, repo_id, revision))

    def history(self, repo_type: str, repo_id: str, revision: str | None) -> list[Commit]:
        commits, commit_id = [], self.resolve(repo_type, repo_id, revision)
        while commit_id:
            commit = self.commit(repo_type, repo_id, commit_id)
            commits.append(commit)
            commit_id = commit.parents[0] if commit.parents else ""
        return commits

    def create_ref(self, repo_type: str, repo_id: str, kind: str, name: str, revision: str | None) -> str:
        """Create branch (`kind="heads"`) or tag (`"tags"`) `name` at `revision`; `ConflictError` if it exists."""
        folder = self._require_repo(repo_type, repo_id)
        check_ref_name(name)
        with self._locked(folder):
            target = self.resolve(repo_type, repo_id, revision)
            path = self._ref_path(folder, kind, name)
            if path.exists():
                raise ConflictError(f"{'branch' if kind == 'heads' else 'tag'} {name} already exists")
            self._atomic_write(path, target)
            return target

    def delete_ref(self, repo_type: str, repo_id: str, kind: str, name: str) -> None:
        folder = self._require_repo(repo_type, repo_id)
        with self._locked(folder):
            path = self._ref_path(folder, kind, name)
            if not path.is_file():
                raise RevisionNotFoundError(f"{name} not found in {repo_id}")
            path.unlink()

    # Commits ---------------------------------------------------------------------------------------------------
    def create_commit(
        self,
        repo_type: str,
        repo_id: str,
        branch: str,
        operations: list[Operation],
        title: str,
        message: str = "",
        parent_commit: str | None = None,
    ) -> str:
        """Apply `operations` on top of `branch` and move it; the blobs of `add` operations must already be stored.

        Raises `StaleParentError` when `parent_commit` is given and is no longer the head of `branch`. Paths of
        deletions are not checked, so that a file stored under an unsafe path before these checks can be removed.
        """
        folder = self._require_repo(repo_type, repo_id)
        for op in operations:
            if op.kind == "add":
                check_path(op.path)
                if not self.has_blob(op.sha256):
                    raise StoreError(f"content of {op.path} ({op.sha256}) was not uploaded")
        with self._locked(folder):
            ref = self._ref_path(folder, "heads", branch)
            if not ref.is_file():
                raise RevisionNotFoundError(f"branch {branch} not found in {repo_id}")
            head = ref.read_text().strip()
            if parent_commit is not None and parent_commit != head:
                raise StaleParentError(f"parent commit {parent_commit} is not the head of {branch} ({head})")
            tree = dict(self.commit(repo_type, repo_id, head).tree)
            for op in operations:
                self._apply(tree, op)
            commit = self._write_commit(folder, [head], title, message, tree)
            if before_ref_update is not None:
                before_ref_update(repo_id, commit.id)
            self._atomic_write(ref, commit.id)
            return commit.id

    def _apply(self, tree: dict[str, FileEntry], op: Operation) -> None:
        path = op.path.strip("/")
        if op.kind == "add":
            size = self.blob_path(op.sha256).stat().st_size
            entry = FileEntry(op.sha256, size, "", op.lfs)
            entry.oid = git_blob_id(len(entry.pointer), [entry.pointer]) if op.lfs else self._git_oid(op.sha256)
            tree[path] = entry
        elif op.kind == "delete":
            if path not in tree:
                raise EntryNotFoundError(f"{path} does not exist")
            del tree[path]
        elif op.kind == "delete_folder":
            for name in [name for name in tree if name.startswith(path + "/")]:
                del tree[name]
        else:
            raise StoreError(f"unknown operation {op.kind}")

    def _git_oid(self, sha256: str) -> str:
        return git_blob_id(self.blob_path(sha256).stat().st_size, self.iter_blob(sha256))
