"""Publishing a run to a Hugging Face Hub: huggingface.co, or the offline server of `rlrf_hub.hub`.

Each stage is a dataset repo `{namespace}/{run_name}-{stage}` and the adapters share the model repo
`{namespace}/{run_name}-adapter`. The result of an iteration is one commit tagged `iter-<t>` (the prompts: `iter-0`),
so `load_dataset(repo, revision="iter-0")` and `PeftModel.from_pretrained(base, repo, revision="iter-1")` read it.
A tag is never moved: publishing again under an existing tag succeeds only when the content is identical.
"""

from __future__ import annotations

import hashlib
import inspect
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx2
from datasets import Dataset, load_dataset
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from ..backends.retry import RetryPolicy, parse_retry_after
from ..cards import adapter_card
from ..cards.tables import Reports
from ..errors import RunError
from ..evaluation.results import EvaluationReport
from ..schemas import FEATURES
from .base import Published, card_content_key, record_published
from .checkpoints import HubCheckpointMirror, checkpoint_branch
from .folder import write_stage_folder
from .results import check_results_iteration, publish_results, results_path

PUBLIC_HUB_HOST = "huggingface.co"
GITATTRIBUTES = ".gitattributes"
RETRIED_STATUSES = frozenset({408, 429})
CONFLICT_STATUSES = frozenset({409, 412})
KEY_CHARS = 12
T = TypeVar("T")


class PublishConflictError(RunError):
    """A tag already names different content: published results are immutable."""


class HubUnavailableError(RunError):
    """The Hub kept failing after every retry, or refused the token; the message names the endpoint, never a
    token."""


def _status(error: BaseException) -> int | None:
    """The HTTP status of a Hub error, looking through what wrapped it (`hf_hub_download` wraps its failures)."""
    current, seen = error, set()
    while current is not None and id(current) not in seen:
        if isinstance(current, HfHubHTTPError) and current.response is not None:
            return current.response.status_code
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _transient(error: BaseException) -> bool:
    """Connection failures, timeouts, 408, 429 and 5xx: worth sending again."""
    status = _status(error)
    if status is not None:
        return status >= 500 or status in RETRIED_STATUSES
    current, seen = error, set()
    while current is not None and id(current) not in seen:
        if isinstance(current, (httpx2.TransportError, ConnectionError, TimeoutError)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _retry_after(error: BaseException) -> float | None:
    response = getattr(error, "response", None)
    return parse_retry_after(response.headers.get("retry-after")) if response is not None else None


def _summary(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:300]


class RetryingApi:
    """An `HfApi` whose calls are sent again on transient failures, with exponential backoff (`RetryPolicy`).

    When the retries run out, or the Hub refuses the token (401, 403), the call raises `HubUnavailableError` naming
    the endpoint and the call. Other errors (a missing repo, revision or file, a conflict) pass through unchanged:
    the publisher decides what they mean.
    """

    def __init__(self, api: HfApi, policy: RetryPolicy):
        self.api, self.policy = api, policy

    @property
    def endpoint(self) -> str:
        return self.api.endpoint

    @property
    def token(self) -> str | bool | None:
        return self.api.token

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.api, name)
        if not callable(attribute):
            return attribute
        return lambda *args, **kwargs: self.call(name, attribute, *args, **kwargs)

    def call(self, what: str, function: Callable[..., T], *args, **kwargs) -> T:
        """`function(*args, **kwargs)`, retried; `what` names it in the final error."""
        for attempt in range(self.policy.max_retries + 1):
            try:
                result = function(*args, **kwargs)
                return list(result) if inspect.isgenerator(result) else result
            except Exception as error:
                if _status(error) in (401, 403) and type(error) is HfHubHTTPError:
                    raise HubUnavailableError(
                        f"hub_endpoint: {self.endpoint} refused {what}: {_summary(error)} (set HF_TOKEN to a token "
                        "that may write to hub_namespace)"
                    ) from None
                if not _transient(error):
                    raise
                if attempt == self.policy.max_retries:
                    raise HubUnavailableError(
                        f"hub_endpoint: {self.endpoint} failed {what} {attempt + 1} time(s), last with "
                        f"{_summary(error)} (published stages and checkpoint parts are kept: run the same command "
                        "again once the Hub answers; hub_max_retries sets the retries)"
                    ) from None
                time.sleep(self.policy.delay(attempt, _retry_after(error)))
        raise AssertionError("unreachable")


def iteration_tag(iteration: int) -> str:
    return f"iter-{iteration}"


def _file_digest(path: Path, digest) -> str:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    return _file_digest(path, hashlib.sha256())


def _git_blob_id(path: Path) -> str:
    return _file_digest(path, hashlib.sha1(f"blob {path.stat().st_size}\0".encode()))


def _local_files(folder: Path) -> list[str]:
    """Files of `folder` as repo paths, without what `upload_folder` would skip (`.git`, the download cache) and
    without `.gitattributes`, which the Hub maintains (a `snapshot_download` brings it along)."""
    paths = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
    return [
        path for path in filter_repo_objects(paths, ignore_patterns=DEFAULT_IGNORE_PATTERNS) if path != GITATTRIBUTES
    ]


class HubPublisher:
    """Publishes each stage and adapter of a run to a Hub as tagged commits, recording them in `published.json`.

    Args:
        namespace: user or organisation owning the repos.
        run_name: prefix of the repo names.
        work_dir: local folder for staging, adapters being trained and downloaded, and `published.json`.
        endpoint: the Hub's URL; None for huggingface.co (or whatever `HF_ENDPOINT` says). Any other host (the
            offline Hub) is also set as this process's endpoint for `datasets` and `huggingface_hub` downloads,
            which have no per-call endpoint, and Xet uploads are turned off for it.
        token: write token; None uses the one the HF clients find themselves. It is kept only inside `HfApi`.
        checkpoint_interval: least seconds between two pushes of a stage's unfinished work (`checkpoints`).
        retry: how Hub calls are retried on connection errors, timeouts, 429 and 5xx (`RetryingApi`).
    """

    def __init__(
        self,
        namespace: str,
        run_name: str,
        work_dir: Path,
        endpoint: str | None = None,
        token: str | None = None,
        checkpoint_interval: float = 60.0,
        retry: RetryPolicy | None = None,
    ):
        if endpoint is not None and urlsplit(endpoint).hostname != PUBLIC_HUB_HOST:
            from ..hub.server import configure_clients

            configure_clients(endpoint)
        self.namespace, self.run_name = namespace, run_name
        self.work_dir = Path(work_dir)
        self.api = RetryingApi(HfApi(endpoint=endpoint, token=token), retry or RetryPolicy(5, 1.0, 30.0))
        self.checkpoint_interval = checkpoint_interval

    def __repr__(self) -> str:
        return f"HubPublisher({self.namespace!r}, {self.run_name!r}, endpoint={self.api.endpoint!r})"

    def repo_id(self, stage: str) -> str:
        """The repo of a stage, or of the adapters for `stage="adapter"`."""
        return f"{self.namespace}/{self.run_name}-{stage}"

    def check(self) -> None:
        """Fail now, before any stage, if the Hub does not answer (after the retries) or, on huggingface.co, if the
        token cannot write to the namespace."""
        self.api.repo_exists(self.repo_id("prompts"), repo_type="dataset")
        if urlsplit(self.api.endpoint).hostname == PUBLIC_HUB_HOST:
            self._check_public_namespace()

    def _check_public_namespace(self) -> None:
        from huggingface_hub import get_token

        if not (self.api.token or get_token()):
            raise HubUnavailableError(
                f"hub_namespace: publishing to {PUBLIC_HUB_HOST} needs a write token (set HF_TOKEN, or run "
                "`hf auth login`)"
            )
        me = self.api.whoami()
        names = {me.get("name")} | {org.get("name") for org in me.get("orgs", [])}
        role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
        if self.namespace not in names or role == "read":
            owned = sorted(name for name in names if name)
            raise HubUnavailableError(
                f"hub_namespace: the token (role {role}, namespaces {owned}) cannot write to {self.namespace!r} on "
                f"{PUBLIC_HUB_HOST} (use one of its namespaces, or a write token)"
            )

    # Datasets ------------------------------------------------------------------------------------------------------
    def find(self, stage: str, iteration: int) -> Published | None:
        repo_id = self.repo_id(stage)
        sha = self._tagged_commit(repo_id, "dataset", _stage_iteration(stage, iteration))
        if sha is None:
            return None
        card = self.api.hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=sha)
        return Published("dataset", stage, iteration, repo_id, sha, card_content_key(Path(card)))

    def load(self, stage: str, iteration: int) -> Dataset:
        found = self.find(stage, iteration)
        if found is None:
            raise FileNotFoundError(f"{self.repo_id(stage)} has no tag {iteration_tag(iteration)}")
        return self.api.call(
            f"loading {found.location}@{found.revision}",
            load_dataset,
            found.location,
            revision=found.revision,
            split="train",
            features=FEATURES[stage],
            token=self.api.token,
        )

    def publish_dataset(
        self, stage: str, iteration: int, rows: list[dict], lineage: dict, description: str
    ) -> Published:
        """Lay the stage out exactly as `FolderPublisher` does, in a staging folder, and push it as one commit."""
        repo_id = self.repo_id(stage)
        t = _stage_iteration(stage, iteration)
        staged = self.work_dir / ".staging" / stage / iteration_tag(t)
        try:
            write_stage_folder(staged, stage, rows, lineage, repo_id, description)
            sha = self._commit_and_tag(repo_id, "dataset", staged, t, f"{stage} of iteration {t}")
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        published = Published("dataset", stage, iteration, repo_id, sha, lineage.get("content_key"))
        self.record(published)
        return published

    def checkpoint_mirror(self, stage: str, iteration: int, key: str) -> HubCheckpointMirror:
        """The stage's unfinished work for the inputs with content key `key`, on a branch of its own: runs that share
        a run_name but not the inputs (another seed, say) never read each other's parts."""
        branch = f"{checkpoint_branch(iteration)}-{key[:KEY_CHARS]}"
        return HubCheckpointMirror(self.api, self.repo_id(stage), "dataset", branch, self.checkpoint_interval)

    # Adapters ------------------------------------------------------------------------------------------------------
    def adapter_dir(self, model_index: int) -> Path:
        return self.work_dir / "adapters" / f"M{model_index}"

    def find_adapter(self, model_index: int) -> Published | None:
        """Download the tagged adapter into `adapter_dir`, so the loop loads it (and its metrics) from a path."""
        repo_id = self.repo_id("adapter")
        sha = self._tagged_commit(repo_id, "model", model_index)
        if sha is None:
            return None
        folder = Path(self.api.snapshot_download(repo_id, revision=sha, local_dir=self.adapter_dir(model_index)))
        key = card_content_key(folder / "README.md")
        return Published("adapter", f"M{model_index}", model_index, repo_id, sha, key)

    def publish_adapter(self, model_index: int, lineage: dict, metrics: dict, settings: dict) -> Published:
        """The trainer wrote the adapter into `adapter_dir`; add the card and push the folder as one commit."""
        repo_id = self.repo_id("adapter")
        folder = self.adapter_dir(model_index)
        card = adapter_card(lineage, metrics, settings, repo_id)
        tmp = folder / "README.md.tmp"
        card.save(tmp)
        tmp.replace(folder / "README.md")
        sha = self._commit_and_tag(repo_id, "model", folder, model_index, f"M{model_index}")
        published = Published("adapter", f"M{model_index}", model_index, repo_id, sha, lineage.get("content_key"))
        self.record(published)
        return published

    def publish_results(self, model_index: int, reports: Reports) -> Published:
        """Results of M_<model_index> (and any other model, e.g. M0 with M1) on the card of adapter M_<model_index>:
        one commit on the adapter repo, tagged `iter-<t>-eval` (see `publishing.results.publish_results`)."""
        check_results_iteration(model_index)
        repo_id, tag = self.repo_id("adapter"), iteration_tag(model_index)
        sha = publish_results(self.api, repo_id, tag, reports)
        published = Published("results", f"M{model_index}", model_index, repo_id, sha)
        details = {"repo_id": repo_id, "repo_type": "model", "tag": f"{tag}-eval"}
        record_published(self.work_dir / "published.json", published, **details)
        return published

    def find_results(self, model_index: int, label: str | None = None) -> EvaluationReport | None:
        """The report of `label` (default `M<model_index>`) under the `iter-<t>-eval` tag of the adapter repo."""
        from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

        path = results_path(label or f"M{model_index}")
        tag = f"{iteration_tag(model_index)}-eval"
        try:
            return EvaluationReport.load(self.api.hf_hub_download(self.repo_id("adapter"), path, revision=tag))
        except (EntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError):
            return None

    def record(self, published: Published) -> None:
        """List `published` in `published.json` with its repo, repo type and tag."""
        adapter = published.kind == "adapter"
        details = {
            "repo_id": published.location,
            "repo_type": "model" if adapter else "dataset",
            "tag": iteration_tag(
                published.iteration if adapter else _stage_iteration(published.name, published.iteration)
            ),
        }
        record_published(self.work_dir / "published.json", published, **details)

    # Commits and tags ----------------------------------------------------------------------------------------------
    def _tagged_commit(self, repo_id: str, repo_type: str, iteration: int) -> str | None:
        try:
            refs = self.api.list_repo_refs(repo_id, repo_type=repo_type)
        except RepositoryNotFoundError:
            return None
        tag = iteration_tag(iteration)
        return next((ref.target_commit for ref in refs.tags if ref.name == tag), None)

    def _commit_and_tag(self, repo_id: str, repo_type: str, folder: Path, iteration: int, message: str) -> str:
        """One commit making the repo's tree exactly `folder`, tagged `iter-<iteration>`; returns its sha.

        The commit names its parent, so a concurrent writer makes it fail rather than interleave. If the repo already
        holds this content (a run that died between commit and tag), huggingface_hub skips the empty commit and
        the head is tagged.
        """
        tag = iteration_tag(iteration)
        existing = self._tagged_commit(repo_id, repo_type, iteration)
        if existing is not None:
            return self._ensure_identical(repo_id, repo_type, existing, folder, tag)
        self.api.create_repo(repo_id, repo_type=repo_type, exist_ok=True)
        head = self.api.repo_info(repo_id, repo_type=repo_type).sha
        local = _local_files(folder)
        remote = self.api.list_repo_files(repo_id, repo_type=repo_type, revision=head) if head else []
        operations = [
            CommitOperationDelete(path_in_repo=path) for path in sorted(set(remote) - set(local) - {GITATTRIBUTES})
        ] + [CommitOperationAdd(path_in_repo=path, path_or_fileobj=folder / path) for path in local]
        try:
            commit = self.api.create_commit(
                repo_id, operations, commit_message=f"Publish {message}", repo_type=repo_type, parent_commit=head
            )
        except HfHubHTTPError as error:
            conflict = _status(error) in CONFLICT_STATUSES
            existing = self._tagged_commit(repo_id, repo_type, iteration) if conflict else None
            if existing is None:
                raise
            return self._ensure_identical(repo_id, repo_type, existing, folder, tag)
        try:
            self.api.create_tag(repo_id, tag=tag, revision=commit.oid, tag_message=message, repo_type=repo_type)
        except HfHubHTTPError as error:
            if _status(error) not in CONFLICT_STATUSES:
                raise
            existing = self._tagged_commit(repo_id, repo_type, iteration)
            return self._ensure_identical(repo_id, repo_type, existing, folder, tag)
        return commit.oid

    def _ensure_identical(self, repo_id: str, repo_type: str, sha: str, folder: Path, tag: str) -> str:
        if self._same_content(repo_id, repo_type, sha, folder):
            return sha
        raise PublishConflictError(
            f"run_name: {repo_type} repo {repo_id} already has tag {tag} (commit {sha}) with different content, "
            "published by another run; published results are never replaced (use another run_name, or delete the tag "
            "on the Hub to publish again)"
        )

    def _same_content(self, repo_id: str, repo_type: str, sha: str, folder: Path) -> bool:
        """Compare by content hash: LFS files by sha256, the others by git blob id; `.gitattributes` is the Hub's."""
        remote = {
            entry.path: entry
            for entry in self.api.list_repo_tree(repo_id, revision=sha, repo_type=repo_type, recursive=True)
            if isinstance(entry, RepoFile) and entry.path != GITATTRIBUTES
        }
        local = _local_files(folder)
        if set(local) != set(remote):
            return False
        for path in local:
            entry = remote[path]
            if entry.lfs is not None:
                if _sha256(folder / path) != entry.lfs.sha256:
                    return False
            elif _git_blob_id(folder / path) != entry.blob_id:
                return False
        return True


def _stage_iteration(stage: str, iteration: int) -> int:
    """The prompts serve every iteration and are published once, as iteration 0."""
    return 0 if stage == "prompts" else iteration
