"""A git-like repository store on disk: content-addressed blobs, commit objects, branches and tags.

Layout under `root`:

    store-id                             a random id, how a client tells that a server serves this store
    blobs/<sha256[:2]>/<sha256>          file contents, shared by every repo
    tmp/                                 partial uploads (renamed into blobs/ once their hash is checked)
    repos/<type>s/<repo_id>/commits/<id>.json
    repos/<type>s/<repo_id>/refs/heads/<quoted branch>, refs/tags/<quoted tag>   (a commit id each)
    repos/<type>s/<repo_id>/refs/prs/<N>                 the head of pull request N (`refs/pr/N` to clients)
    repos/<type>s/<repo_id>/discussions/<N>.json         discussion or pull request N
    repos/<type>s/<repo_id>/settings.json                `private` and `gated`
    repos/<type>s/<repo_id>/lock

A commit writes its blobs and its commit object first and only then moves the ref with an atomic rename, under an
exclusive `flock` on the repo's lock file, so a process killed mid-commit leaves the branch where it was and two
writers never interleave (the second one sees a moved branch and gets a `ConflictError` if it named a parent).
Settings, discussions and pull request refs are written the same way: a complete file renamed into place, under
the lock.

Every blob id, repository id, file path and ref name is checked against `validation` here too, not only by the
server, so no caller can make the store read or write outside `root`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
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
PR_REF = re.compile(r"refs/pr/([1-9][0-9]{0,8})")
DEFAULT_SETTINGS = {"private": False, "gated": False}
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

    def create_repo(self, repo_type: str, repo_id: str, private: bool = False) -> str:
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
            self._atomic_write(folder / "settings.json", json.dumps({**DEFAULT_SETTINGS, "private": private}))
            staging = folder / "refs.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            (staging / "heads").mkdir(parents=True)
            (staging / "tags").mkdir()
            (staging / "heads" / "main").write_text(commit.id)
            os.replace(staging, folder / "refs")
            return commit.id

    def list_repos(self, repo_type: str) -> list[str]:
        """The ids of every repository of `repo_type`, sorted."""
        if repo_type not in REPO_TYPES:
            raise RepoNotFoundError(f"unknown repository type {repo_type!r}")
        top = self.root / "repos" / f"{repo_type}s"
        if not top.is_dir():
            return []
        ids = []
        for entry in top.iterdir():
            if (entry / "refs").is_dir():
                ids.append(entry.name)
            elif entry.is_dir():
                ids.extend(f"{entry.name}/{repo.name}" for repo in entry.iterdir() if (repo / "refs").is_dir())
        return sorted(ids)

    def settings(self, repo_type: str, repo_id: str) -> dict:
        """`private` and `gated` of a repo (repos created before settings existed are public and not gated)."""
        path = self._require_repo(repo_type, repo_id) / "settings.json"
        return {**DEFAULT_SETTINGS, **(json.loads(path.read_text()) if path.is_file() else {})}

    def is_private(self, repo_type: str, repo_id: str) -> bool:
        return self.repo_exists(repo_type, repo_id) and bool(self.settings(repo_type, repo_id)["private"])

    def update_settings(self, repo_type: str, repo_id: str, changes: dict) -> dict:
        """Apply `changes` (keys of `DEFAULT_SETTINGS`, already checked) and return the new settings."""
        folder = self._require_repo(repo_type, repo_id)
        with self._locked(folder):
            settings = {**self.settings(repo_type, repo_id), **changes}
            self._atomic_write(folder / "settings.json", json.dumps(settings))
            return settings

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
        """Branches, tags and pull requests (as `refs/pr/N`), each name to its commit id."""
        folder = self._require_repo(repo_type, repo_id)
        prs = self._read_refs(folder, "prs") if (folder / "refs" / "prs").is_dir() else {}
        pull_requests = {f"refs/pr/{num}": prs[num] for num in sorted(prs, key=int)}
        return {
            "branches": self._read_refs(folder, "heads"),
            "tags": self._read_refs(folder, "tags"),
            "prs": pull_requests,
        }

    def _branch_path(self, folder: Path, branch: str) -> Path:
        """Where the head of `branch` is kept: `refs/heads/`, or `refs/prs/N` for the pull request `refs/pr/N`."""
        if match := PR_REF.fullmatch(branch):
            return folder / "refs" / "prs" / match.group(1)
        return self._ref_path(folder, "heads", branch)

    def resolve(self, repo_type: str, repo_id: str, revision: str | None) -> str:
        """Commit id of a branch, tag or commit id (full), or `RevisionNotFoundError`."""
        folder = self._require_repo(repo_type, repo_id)
        revision = revision or "main"
        for path in (self._branch_path(folder, revision), self._ref_path(folder, "tags", revision)):
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
        """Apply `operations` on top of `branch` (or pull request `refs/pr/N`) and move it; the blobs of `add`
        operations must already be stored.

        Raises `StaleParentError` when `parent_commit` is given and is no longer the head of `branch`. Paths of
        deletions are not checked, so that a file stored under an unsafe path before these checks can be removed.
        """
        folder = self._checked_repo(repo_type, repo_id, operations)
        with self._locked(folder):
            ref = self._branch_path(folder, branch)
            head = self._head(ref, branch, repo_id)
            if parent_commit is not None and parent_commit != head:
                raise StaleParentError(f"parent commit {parent_commit} is not the head of {branch} ({head})")
            pull_request = self._pull_request_of(folder, branch)
            if pull_request is not None and pull_request["status"] != "open":
                raise ConflictError(f"pull request {branch} is {pull_request['status']}")
            commit_id = self._commit_and_move(folder, repo_type, repo_id, ref, head, operations, title, message)
            if pull_request is not None:
                self._add_event(folder, pull_request, "commit", {"subject": title, "oid": commit_id})
            return commit_id

    def create_pull_request(
        self,
        repo_type: str,
        repo_id: str,
        base: str,
        operations: list[Operation],
        title: str,
        message: str = "",
        parent_commit: str | None = None,
        author: str = "",
    ) -> tuple[str, int]:
        """Open pull request N against branch `base`, starting at its head (or at `parent_commit`), with one commit
        of `operations` on `refs/pr/N`; returns (commit id, N)."""
        folder = self._checked_repo(repo_type, repo_id, operations)
        with self._locked(folder):
            start = self._pr_start(repo_type, repo_id, folder, base, parent_commit)
            num = self._next_discussion_number(folder)
            ref = folder / "refs" / "prs" / str(num)
            ref.parent.mkdir(exist_ok=True)
            commit_id = self._commit_and_move(folder, repo_type, repo_id, ref, start, operations, title, message)
            record = self._new_discussion(num, title, message, author, base, start)
            record["events"].append(_event("commit", author, {"subject": title, "oid": commit_id}))
            self._write_discussion(folder, record)
            return commit_id, num

    def _checked_repo(self, repo_type: str, repo_id: str, operations: list[Operation]) -> Path:
        folder = self._require_repo(repo_type, repo_id)
        for op in operations:
            if op.kind == "add":
                check_path(op.path)
                if not self.has_blob(op.sha256):
                    raise StoreError(f"content of {op.path} ({op.sha256}) was not uploaded")
        return folder

    def _head(self, ref: Path, branch: str, repo_id: str) -> str:
        if not ref.is_file():
            raise RevisionNotFoundError(f"branch {branch} not found in {repo_id}")
        return ref.read_text().strip()

    def _commit_and_move(
        self,
        folder: Path,
        repo_type: str,
        repo_id: str,
        ref: Path,
        head: str,
        operations: list[Operation],
        title: str,
        message: str,
    ) -> str:
        tree = dict(self.commit(repo_type, repo_id, head).tree)
        for op in operations:
            self._apply(tree, op)
        commit = self._write_commit(folder, [head], title, message, tree)
        if before_ref_update is not None:
            before_ref_update(repo_id, commit.id)
        self._atomic_write(ref, commit.id)
        return commit.id

    def squash_history(self, repo_type: str, repo_id: str, branch: str, title: str) -> str:
        """Replace the history of `branch` by one parentless commit holding its current files."""
        folder = self._require_repo(repo_type, repo_id)
        with self._locked(folder):
            ref = self._branch_path(folder, branch)
            if not ref.is_file() and self._ref_path(folder, "tags", branch).is_file():
                raise StoreError(f"{branch} is a tag: only a branch's history can be squashed")
            head = self.commit(repo_type, repo_id, self._head(ref, branch, repo_id))
            commit = self._write_commit(folder, [], title, "", head.tree)
            self._atomic_write(ref, commit.id)
            return commit.id

    def _apply(self, tree: dict[str, FileEntry], op: Operation) -> None:
        path = op.path.strip("/")
        if op.kind == "add":
            size = self.blob_path(op.sha256).stat().st_size
            entry = FileEntry(op.sha256, size, "", op.lfs)
            entry.oid = git_blob_id(len(entry.pointer), [entry.pointer]) if op.lfs else self.content_git_oid(op.sha256)
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

    def content_git_oid(self, sha256: str) -> str:
        """The git blob id of a blob's content (for a file kept by LFS, git's own id is the pointer's)."""
        return git_blob_id(self.blob_path(sha256).stat().st_size, self.iter_blob(sha256))

    # Discussions and pull requests -----------------------------------------------------------------------------
    def create_discussion(
        self, repo_type: str, repo_id: str, title: str, description: str, author: str, pull_request: bool
    ) -> int:
        """Open a discussion, or a pull request against `main` whose `refs/pr/N` starts at its head; returns N."""
        folder = self._require_repo(repo_type, repo_id)
        with self._locked(folder):
            num = self._next_discussion_number(folder)
            base = start = None
            if pull_request:
                base, start = "main", self._pr_start(repo_type, repo_id, folder, "main", None)
                ref = folder / "refs" / "prs" / str(num)
                ref.parent.mkdir(exist_ok=True)
                self._atomic_write(ref, start)
            self._write_discussion(folder, self._new_discussion(num, title, description, author, base, start))
            return num

    def discussions(self, repo_type: str, repo_id: str) -> list[dict]:
        """Every discussion and pull request of a repo, newest first."""
        folder = self._require_repo(repo_type, repo_id) / "discussions"
        if not folder.is_dir():
            return []
        records = [json.loads(path.read_text()) for path in folder.glob("*.json")]
        return sorted(records, key=lambda record: -record["num"])

    def discussion(self, repo_type: str, repo_id: str, num: int) -> dict:
        path = self._require_repo(repo_type, repo_id) / "discussions" / f"{int(num)}.json"
        if not path.is_file():
            raise EntryNotFoundError(f"discussion {num} not found in {repo_id}")
        return json.loads(path.read_text())

    def comment_discussion(self, repo_type: str, repo_id: str, num: int, text: str, author: str) -> dict:
        """Add a comment; returns its event."""
        folder = self._require_repo(repo_type, repo_id)
        with self._locked(folder):
            record = self.discussion(repo_type, repo_id, num)
            return self._add_event(folder, record, "comment", _comment(text), author)

    def set_discussion_status(
        self, repo_type: str, repo_id: str, num: int, status: str, author: str, comment: str = ""
    ) -> dict:
        """Close or reopen a discussion or pull request (a merged one stays merged); returns the status event."""
        folder = self._require_repo(repo_type, repo_id)
        with self._locked(folder):
            record = self.discussion(repo_type, repo_id, num)
            if record["status"] == "merged":
                raise StoreError(f"pull request {num} is merged")
            if comment:
                self._add_event(folder, record, "comment", _comment(comment), author)
            record["status"] = status
            return self._add_event(folder, record, "status-change", {"status": status}, author)

    def merge_pull_request(self, repo_type: str, repo_id: str, num: int, author: str, comment: str = "") -> str:
        """Merge pull request N into its base branch with a merge commit; `ConflictError` names the files changed
        both by the pull request and on the base branch since the pull request started."""
        folder = self._require_repo(repo_type, repo_id)
        with self._locked(folder):
            record = self.discussion(repo_type, repo_id, num)
            if not record["isPullRequest"] or record["status"] != "open":
                raise StoreError(f"discussion {num} is not an open pull request")
            base = record["changes"]["base"]
            base_ref = self._branch_path(folder, base)
            base_head = self.commit(repo_type, repo_id, self._head(base_ref, base, repo_id))
            start = self.commit(repo_type, repo_id, record["startCommit"])
            pr_head = self.commit(repo_type, repo_id, self._head(folder / "refs" / "prs" / str(num), "PR", repo_id))
            tree = _merged_tree(start.tree, pr_head.tree, base_head.tree)
            title = f"Merge refs/pr/{num} into {base}"
            commit = self._write_commit(folder, [base_head.id, pr_head.id], title, comment, tree)
            self._atomic_write(base_ref, commit.id)
            record["status"] = "merged"
            record["changes"]["mergeCommitId"] = commit.id
            self._add_event(folder, record, "status-change", {"status": "merged"}, author)
            return commit.id

    def _pull_request_of(self, folder: Path, branch: str) -> dict | None:
        match = PR_REF.fullmatch(branch)
        path = folder / "discussions" / f"{match.group(1)}.json" if match else None
        return json.loads(path.read_text()) if path is not None and path.is_file() else None

    def _pr_start(self, repo_type: str, repo_id: str, folder: Path, base: str, parent_commit: str | None) -> str:
        head = self._head(self._ref_path(folder, "heads", base), base, repo_id)
        return self.resolve(repo_type, repo_id, parent_commit) if parent_commit else head

    def _next_discussion_number(self, folder: Path) -> int:
        """One more than any discussion or pull request ref so far (a ref may outlive a crash before its record)."""
        used = [path.stem for path in (folder / "discussions").glob("*.json")]
        used += [path.name for path in (folder / "refs" / "prs").glob("*")]
        return max((int(name) for name in used if name.isdigit()), default=0) + 1

    def _new_discussion(
        self, num: int, title: str, description: str, author: str, base: str | None, start: str | None
    ) -> dict:
        record = {
            "num": num,
            "title": title,
            "status": "open",
            "isPullRequest": base is not None,
            "createdAt": _now(),
            "author": {"name": author},
            "events": [_event("comment", author, _comment(description))],
        }
        if base is not None:
            record.update({"changes": {"base": base}, "startCommit": start})
        return record

    def _write_discussion(self, folder: Path, record: dict) -> None:
        (folder / "discussions").mkdir(exist_ok=True)
        self._atomic_write(folder / "discussions" / f"{record['num']}.json", json.dumps(record))

    def _add_event(self, folder: Path, record: dict, kind: str, data: dict, author: str = "") -> dict:
        event = _event(kind, author or record["author"]["name"], data)
        record["events"].append(event)
        self._write_discussion(folder, record)
        return event


def _event(kind: str, author: str, data: dict) -> dict:
    return {"id": secrets.token_hex(12), "type": kind, "createdAt": _now(), "author": {"name": author}, "data": data}


def _comment(text: str) -> dict:
    return {"edited": False, "hidden": False, "latest": {"raw": text}}


def _merged_tree(start: dict, theirs: dict, ours: dict) -> dict:
    """`ours` with the changes from `start` to `theirs` applied; a path changed on both sides differently is a
    conflict."""
    changed = {path for path in start.keys() | theirs.keys() if start.get(path) != theirs.get(path)}
    conflicts = sorted(p for p in changed if ours.get(p) != start.get(p) and ours.get(p) != theirs.get(p))
    if conflicts:
        raise ConflictError(f"conflicting files: {', '.join(conflicts[:20])}")
    merged = dict(ours)
    for path in changed:
        if path in theirs:
            merged[path] = theirs[path]
        else:
            merged.pop(path, None)
    return merged
