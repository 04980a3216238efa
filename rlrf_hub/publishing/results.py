"""Evaluation results on a published adapter: read back and written, on a Hub (one commit on the adapter repo) or in
an adapter folder. The files themselves come from `rlrf_hub.cards.results`."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import RepoFile

from ..cards.results import RESULT_PREFIXES, RESULTS_DIR, card_label, results_files
from ..cards.tables import ITER_TAG, Reports, ResultsError, labelled_reports, order_labels
from ..evaluation.results import RESULTS_FILE, EvaluationReport

_RAW_RESULTS = re.compile(rf"^{RESULTS_DIR}/([^/]+)/{re.escape(RESULTS_FILE)}$")


# Reading results back ----------------------------------------------------------------------------------------------
def read_folder_results(folder: str | Path) -> dict[str, EvaluationReport]:
    """The raw reports under `<folder>/eval/<label>/eval_results.json`, by label."""
    root = Path(folder) / RESULTS_DIR
    found = {path.parent.name: EvaluationReport.load(path) for path in sorted(root.glob(f"*/{RESULTS_FILE}"))}
    return {label: found[label] for label in order_labels(found)}


def read_hub_results(api: HfApi, repo_id: str, revision: str = "main") -> tuple[dict[str, EvaluationReport], str]:
    """The raw reports of the newest commit reachable from `revision` that holds any, and that commit ('' if none).

    An adapter commit replaces the repo's tree by the adapter folder, so the results of earlier models are found
    in the results commit before it.
    """
    for commit in api.list_repo_commits(repo_id, revision=revision):
        paths = [p for p in api.list_repo_files(repo_id, revision=commit.commit_id) if _RAW_RESULTS.match(p)]
        if paths:
            found = {
                _RAW_RESULTS.match(path).group(1): EvaluationReport.load(
                    api.hf_hub_download(repo_id, path, revision=commit.commit_id)
                )
                for path in paths
            }
            return {label: found[label] for label in order_labels(found)}, commit.commit_id
    return {}, ""


# Publishing --------------------------------------------------------------------------------------------------------
def _adapter_files(api: HfApi, repo_id: str, revision: str) -> dict[str, str]:
    """The adapter's own files at a revision (not the card, not results) by content id."""
    return {
        entry.path: entry.lfs.sha256 if entry.lfs is not None else entry.blob_id
        for entry in api.list_repo_tree(repo_id, revision=revision, recursive=True)
        if isinstance(entry, RepoFile)
        and entry.path not in ("README.md", ".gitattributes")
        and not entry.path.startswith(RESULT_PREFIXES)
    }


def publish_results(
    api: HfApi,
    repo_id: str,
    revision: str,
    reports: Reports,
    *,
    branch: str = "main",
    label: str | None = None,
    tag: bool = True,
) -> str:
    """Put evaluation results on the card of the adapter at `revision` (e.g. `iter-2`) as one commit on `branch`.

    `reports` are the new results (`EvaluationReport`s labelled by `model_label`, or a `{label: report}` dict for
    baselines); results already on the repo are kept unless a new report has the same label. The card starts from
    the one at `revision` and describes the model named by its `rlrf.model_name` (or `label`). `branch` must hold
    the same adapter as `revision`: the card on `main` describes the adapter stored there. When `revision` is a tag
    `iter-<t>` and `tag` is set, the commit is tagged `iter-<t>-eval` unless that tag exists already (tags are never
    moved; later updates land on `branch` only). Only changed files are committed, and nothing when nothing changed
    (the branch head's sha is returned then), so publishing the same results again is a no-op.
    """
    new = labelled_reports(reports)
    target = api.repo_info(repo_id, revision=revision).sha
    head = api.repo_info(repo_id, revision=branch).sha
    if _adapter_files(api, repo_id, target) != _adapter_files(api, repo_id, head):
        raise ResultsError(
            f"{repo_id}: branch {branch!r} holds a different adapter than {revision!r} (a later model was "
            "published?); publish on the card of the adapter the branch holds, passing the older models' reports too"
        )
    card = ModelCard.load(api.hf_hub_download(repo_id, "README.md", revision=target))
    current = label or card_label(card)
    if current is None:
        raise ResultsError(f"{repo_id}@{revision}: the card has no rlrf.model_name; pass label=")
    existing, _ = read_hub_results(api, repo_id, head)
    labelled = {**existing, **new}
    labelled = {name: labelled[name] for name in order_labels(labelled)}

    eval_tag = f"{revision}-eval" if tag and ITER_TAG.match(revision) else None
    new_tag = eval_tag if eval_tag and eval_tag not in {ref.name for ref in api.list_repo_refs(repo_id).tags} else None

    def source_url(path: str) -> str:
        return f"{api.endpoint.rstrip('/')}/{repo_id}/blob/{quote(branch, safe='')}/{path}"

    files = results_files(card, labelled, current, source_url)
    sha = _commit_changes(api, repo_id, branch, head, files, f"Evaluation results of {current}")
    if new_tag:
        _tag(api, repo_id, new_tag, sha, f"{current} with its evaluation")
    return sha


def _commit_changes(api: HfApi, repo_id: str, branch: str, head: str, files: dict[str, bytes], message: str) -> str:
    """One commit on `branch` writing the changed `files` and deleting results files no longer among them; nothing
    (and `head` is returned) when nothing changed."""
    remote = {
        entry.path: entry
        for entry in api.list_repo_tree(repo_id, revision=head, recursive=True)
        if isinstance(entry, RepoFile)
    }
    stale = [path for path in remote if path.startswith(RESULT_PREFIXES) and path not in files]
    changed = {path: content for path, content in files.items() if not _same_file(remote.get(path), content)}
    if not (stale or changed):
        return head
    operations = [CommitOperationDelete(path_in_repo=path) for path in stale] + [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=content) for path, content in changed.items()
    ]
    return api.create_commit(repo_id, operations, commit_message=message, revision=branch, parent_commit=head).oid


def _tag(api: HfApi, repo_id: str, tag: str, sha: str, message: str) -> None:
    """Tag `sha`; a tag that another writer created meanwhile is kept as it is."""
    try:
        api.create_tag(repo_id, tag=tag, revision=sha, tag_message=message)
    except HfHubHTTPError as error:
        if error.response is None or error.response.status_code != 409:
            raise


def _same_file(entry: RepoFile | None, content: bytes) -> bool:
    """Whether a repo file holds `content`: LFS files by sha256, the others by git blob id."""
    if entry is None:
        return False
    if entry.lfs is not None:
        return hashlib.sha256(content).hexdigest() == entry.lfs.sha256
    return hashlib.sha1(f"blob {len(content)}\0".encode() + content).hexdigest() == entry.blob_id


def publish_results_to_folder(
    folder: str | Path, reports: Reports, *, label: str | None = None, carry_from: Iterable[str | Path] = ()
) -> Path:
    """The same results files as `publish_results`, written into a local Hub-shaped adapter folder.

    Results found in `carry_from` folders (earlier adapters, in order) and in `folder` itself are kept unless a new
    report has the same label. Each file is replaced atomically; returns the card's path.
    """
    folder = Path(folder)
    readme = folder / "README.md"
    if not readme.is_file():
        raise ResultsError(f"{readme} does not exist: publish the adapter (with its card) before its results")
    card = ModelCard.load(readme)
    current = label or card_label(card)
    if current is None:
        raise ResultsError(f"{readme}: the card has no rlrf.model_name; pass label=")
    labelled: dict[str, EvaluationReport] = {}
    for other in [*carry_from, folder]:
        labelled.update(read_folder_results(other))
    labelled.update(labelled_reports(reports))
    labelled = {name: labelled[name] for name in order_labels(labelled)}
    files = results_files(card, labelled, current)
    for old in (path for prefix in RESULT_PREFIXES for path in sorted((folder / prefix).rglob("*"))):
        if old.is_file() and old.relative_to(folder).as_posix() not in files:
            old.unlink()
    for path, content in files.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(content)
        os.replace(tmp, target)
    return readme


def folder_results_revision(folder: Path) -> str:
    """A content hash of the raw reports in an adapter folder: the revision of its results."""
    digest = hashlib.sha256()
    for path in sorted((folder / RESULTS_DIR).glob(f"*/{RESULTS_FILE}")):
        digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:40]


def results_path(label: str) -> str:
    """Where the raw report of the model `label` lives in an adapter repo or folder."""
    return f"{RESULTS_DIR}/{label}/{RESULTS_FILE}"


def check_results_iteration(iteration: int) -> None:
    if iteration < 1:
        raise ResultsError("results go on an adapter's card: publish M0's results together with M1's (iteration=1)")
