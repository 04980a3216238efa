"""Publishing a run to a Hugging Face Hub: huggingface.co, or the offline server of `rlrf_hub.hub`.

Each stage is a dataset repo `{namespace}/{run_name}-{stage}` and the adapters share the model repo
`{namespace}/{run_name}-adapter`. The result of an iteration is one commit tagged `iter-<t>` (the prompts: `iter-0`),
so `load_dataset(repo, revision="iter-0")` and `PeftModel.from_pretrained(base, repo, revision="iter-1")` read it.
A tag is never moved: publishing again under an existing tag succeeds only when the content is identical.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from datasets import Dataset, load_dataset
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from ..cards import adapter_card
from ..publishing import Published, card_content_key, record_published, write_stage_folder
from ..schemas import FEATURES
from .checkpoints import HubCheckpointMirror, checkpoint_branch

PUBLIC_HUB_HOST = "huggingface.co"
GITATTRIBUTES = ".gitattributes"


class PublishConflictError(RuntimeError):
    """A tag already names different content: published results are immutable."""


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
    """

    def __init__(
        self,
        namespace: str,
        run_name: str,
        work_dir: Path,
        endpoint: str | None = None,
        token: str | None = None,
        checkpoint_interval: float = 60.0,
    ):
        if endpoint is not None and urlsplit(endpoint).hostname != PUBLIC_HUB_HOST:
            from .server import configure_clients

            configure_clients(endpoint)
        self.namespace, self.run_name = namespace, run_name
        self.work_dir = Path(work_dir)
        self.api = HfApi(endpoint=endpoint, token=token)
        self.checkpoint_interval = checkpoint_interval

    def __repr__(self) -> str:
        return f"HubPublisher({self.namespace!r}, {self.run_name!r}, endpoint={self.api.endpoint!r})"

    def repo_id(self, stage: str) -> str:
        """The repo of a stage, or of the adapters for `stage="adapter"`."""
        return f"{self.namespace}/{self.run_name}-{stage}"

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
        return load_dataset(
            found.location, revision=found.revision, split="train", features=FEATURES[stage], token=self.api.token
        )

    def publish_dataset(self, stage: str, iteration: int, rows: list[dict], lineage: dict) -> Published:
        """Lay the stage out exactly as `FolderPublisher` does, in a staging folder, and push it as one commit."""
        repo_id = self.repo_id(stage)
        t = _stage_iteration(stage, iteration)
        staged = self.work_dir / ".staging" / stage / iteration_tag(t)
        try:
            write_stage_folder(staged, stage, rows, lineage, repo_id)
            sha = self._commit_and_tag(repo_id, "dataset", staged, t, f"{stage} of iteration {t}")
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        published = Published("dataset", stage, iteration, repo_id, sha, lineage.get("content_key"))
        self.record(published)
        return published

    def checkpoint_mirror(self, stage: str, iteration: int) -> HubCheckpointMirror:
        return HubCheckpointMirror(
            self.api, self.repo_id(stage), "dataset", checkpoint_branch(iteration), self.checkpoint_interval
        )

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
        commit = self.api.create_commit(
            repo_id, operations, commit_message=f"Publish {message}", repo_type=repo_type, parent_commit=head
        )
        try:
            self.api.create_tag(repo_id, tag=tag, revision=commit.oid, tag_message=message, repo_type=repo_type)
        except HfHubHTTPError as error:
            if error.response is None or error.response.status_code != 409:
                raise
            existing = self._tagged_commit(repo_id, repo_type, iteration)
            return self._ensure_identical(repo_id, repo_type, existing, folder, tag)
        return commit.oid

    def _ensure_identical(self, repo_id: str, repo_type: str, sha: str, folder: Path, tag: str) -> str:
        if self._same_content(repo_id, repo_type, sha, folder):
            return sha
        raise PublishConflictError(
            f"{repo_type} repo {repo_id} already has tag {tag} (commit {sha}) with different content; published "
            f"results are never replaced. Use another run_name, or delete the tag on the Hub to publish again."
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
