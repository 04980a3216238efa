"""The offline Hub as the unmodified clients use it: byte ranges, repo naming, pull requests and discussions,
settings and private repos, LFS preupload answers, history squashing and repo listings."""

import os

os.environ["HF_HUB_DISABLE_XET"] = "1"

import hashlib
import http.client
import json
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import hf_clients
from huggingface_hub import CommitOperationAdd, HfApi, HfFileSystem, hf_hub_download
from huggingface_hub.errors import BadRequestError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from rlrf_hub.hub.ranges import RangeNotSatisfiable, parse_range
from rlrf_hub.hub.server import serve

TOKEN = "clients-write-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A token-protected server; this module's clients hold the token through `HF_TOKEN`, like a logged-in user."""
    root = tmp_path_factory.mktemp("clients-root")
    server, url = serve(root, token=TOKEN)
    with hf_clients(tmp_path_factory.mktemp("hf-caches"), url) as patch:
        patch.setenv("HF_TOKEN", TOKEN)
        yield SimpleNamespace(url=url, root=root, api=HfApi(endpoint=url, token=TOKEN), server=server)
    server.shutdown()
    server.server_close()


def _call(url: str, method: str, path: str, body=b"", headers: dict | None = None) -> tuple[int, dict, bytes]:
    headers = dict(headers or {})
    if isinstance(body, dict | list):
        body, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _parquet(path: Path, rows: int = 400_000) -> None:
    """A parquet file of random numbers (incompressible, so about 8 bytes a value) in several row groups."""
    rng = np.random.default_rng(0)
    table = pa.table({"x": rng.random(rows), "y": rng.integers(0, 1 << 62, rows)})
    pq.write_table(table, path, row_group_size=rows // 8, compression="none")


# Byte ranges ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-0", (0, 0)),
        ("bytes=10-19", (10, 19)),
        ("bytes=10-", (10, 99)),
        ("bytes=90-500", (90, 99)),
        ("bytes=-5", (95, 99)),
        ("bytes=-500", (0, 99)),
        (None, None),
        ("bytes=5-3", None),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=-", None),
        ("bytes=" + "9" * 5000 + "-", None),
    ],
)
def test_range_header_parsing(header, expected):
    wanted = parse_range(header, 100)
    assert (wanted and (wanted.start, wanted.end)) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100)])
def test_unsatisfiable_ranges(header, size):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


@pytest.fixture(scope="module")
def blob_repo(hub):
    """`ranges/blob` holding `data.bin` (LFS, 3 MB) and `small.txt` (a regular file), and discussion 1."""
    data = random.Random(1).randbytes(3 * 1024 * 1024 + 17)
    hub.api.create_repo("ranges/blob")
    hub.api.create_commit(
        "ranges/blob",
        [CommitOperationAdd("data.bin", data), CommitOperationAdd("small.txt", b"0123456789")],
        commit_message="data",
    )
    hub.api.create_discussion("ranges/blob", title="a question")
    return data


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_resolve_answers_ranges_with_206_and_content_range(hub, blob_repo, method):
    size = len(blob_repo)
    cases = {
        "bytes=1000-1099": (1000, 1099),
        "bytes=1000-": (1000, size - 1),
        "bytes=-100": (size - 100, size - 1),
        f"bytes={size - 10}-{size + 1000}": (size - 10, size - 1),
    }
    for header, (start, end) in cases.items():
        status, headers, body = _call(hub.url, method, "/ranges/blob/resolve/main/data.bin", headers={"Range": header})
        assert status == 206, header
        assert headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert int(headers["content-length"]) == end - start + 1
        assert body == (blob_repo[start : end + 1] if method == "GET" else b"")
    status, headers, body = _call(hub.url, method, "/ranges/blob/resolve/main/data.bin", headers={"Range": "x"})
    assert status == 200 and int(headers["content-length"]) == size and "content-range" not in headers
    assert body == (blob_repo if method == "GET" else b"")
    status, headers, _ = _call(hub.url, method, "/ranges/blob/resolve/main/small.txt", headers={"Range": "bytes=10-"})
    assert status == 416 and headers["content-range"] == "bytes */10"
    status, _, body = _call(hub.url, method, "/ranges/blob/resolve/main/small.txt", headers={"Range": "bytes=2-4"})
    assert status == 206 and body == (b"234" if method == "GET" else b"")


def test_hf_file_system_random_reads_match_the_file(hub, blob_repo):
    fs = HfFileSystem(endpoint=hub.url, token=TOKEN)
    rng = random.Random(2)
    with fs.open("ranges/blob/data.bin", "rb", block_size=64 * 1024) as remote:
        for _ in range(40):
            start = rng.randrange(len(blob_repo))
            length = rng.randrange(1, 200_000)
            remote.seek(start)
            assert remote.read(length) == blob_repo[start : start + length]
        remote.seek(len(blob_repo) - 5)
        assert remote.read(100) == blob_repo[-5:]
    assert fs.cat_file("ranges/blob/data.bin", start=1000, end=1100) == blob_repo[1000:1100]
    assert fs.cat_file("ranges/blob/data.bin", start=-100) == blob_repo[-100:]


def test_streaming_load_dataset_reads_a_parquet_over_5_mb(hub, tmp_path):
    path = tmp_path / "train.parquet"
    _parquet(path)
    assert path.stat().st_size > 5 * 1024 * 1024
    hub.api.create_repo("ranges/stream", repo_type="dataset")
    hub.api.upload_file(
        path_or_fileobj=str(path), path_in_repo="data/train.parquet", repo_id="ranges/stream", repo_type="dataset"
    )
    expected = pq.read_table(path)
    streamed = datasets.load_dataset("ranges/stream", split="train", streaming=True)
    rows = list(streamed)
    assert len(rows) == expected.num_rows
    assert [row["x"] for row in rows[::10_007]] == expected.column("x").to_pylist()[::10_007]
    assert rows[-1]["y"] == expected.column("y")[-1].as_py()


# Repo naming ------------------------------------------------------------------------------------------------------
def test_a_create_without_namespace_goes_under_the_token_user(hub):
    assert hub.api.whoami()["name"] == "offline"
    url = hub.api.create_repo("solo")
    assert url.repo_id == "offline/solo" and url.namespace == "offline"
    assert hub.api.repo_info("offline/solo").id == "offline/solo"
    hub.api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=url.repo_id)
    hub.api.delete_repo("solo")
    with pytest.raises(RepositoryNotFoundError):
        hub.api.repo_info("offline/solo")


@pytest.mark.parametrize("repo_id", ["_private-ns/model_1", "ns/_x", "A.b-c_/d", "x" * 96 + "/" + "y" * 96])
def test_repo_ids_that_huggingface_hub_accepts_work(hub, repo_id):
    hub.api.create_repo(repo_id, repo_type="dataset")
    hub.api.upload_file(path_or_fileobj=b"ok", path_in_repo="f.txt", repo_id=repo_id, repo_type="dataset")
    assert hub.api.list_repo_files(repo_id, repo_type="dataset") == [".gitattributes", "f.txt"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "a--b"},
        {"name": "x", "organization": "-ns"},
        {"name": "m.git", "organization": "ns"},
        {"name": "x" * 97},
        {"name": "a/b", "organization": "ns"},
        {"name": "é", "organization": "ns"},
    ],
)
def test_invalid_repo_ids_are_400_with_the_rules(hub, body):
    status, headers, answer = _call(hub.url, "POST", "/api/repos/create", body, AUTH)
    assert status == 400 and headers["x-error-code"] == "BadRequest"
    assert "invalid repository" in json.loads(answer)["error"]
    status, headers, answer = _call(hub.url, "GET", "/api/models/ns/bad..id")
    assert status == 400 and "'namespace/name'" in json.loads(answer)["error"]


# Pull requests and discussions -------------------------------------------------------------------------------------
def test_create_commit_and_upload_file_open_pull_requests_that_merge_into_main(hub):
    api = hub.api
    api.create_repo("prs/model")
    main_before = api.repo_info("prs/model").sha
    first = api.create_commit(
        "prs/model", [CommitOperationAdd("weights.safetensors", b"\0" * 300)], commit_message="weights", create_pr=True
    )
    second = api.upload_file(path_or_fileobj=b"card", path_in_repo="README.md", repo_id="prs/model", create_pr=True)
    assert (first.pr_num, first.pr_revision, second.pr_num) == (1, "refs/pr/1", 2)
    assert first.pr_url.endswith("/prs/model/discussions/1")
    assert api.repo_info("prs/model").sha == main_before
    assert hf_hub_download("prs/model", "README.md", revision=second.pr_revision, token=TOKEN)

    api.upload_file(path_or_fileobj=b"more", path_in_repo="more.txt", repo_id="prs/model", revision="refs/pr/1")
    refs = api.list_repo_refs("prs/model", include_pull_requests=True)
    assert [ref.name for ref in refs.pull_requests] == ["refs/pr/1", "refs/pr/2"]
    assert api.list_repo_refs("prs/model").pull_requests is None
    assert set(api.list_repo_files("prs/model", revision="refs/pr/1")) == {
        ".gitattributes",
        "weights.safetensors",
        "more.txt",
    }

    api.merge_pull_request("prs/model", 1)
    api.merge_pull_request("prs/model", 2, comment="thanks")
    assert set(api.list_repo_files("prs/model")) == {".gitattributes", "weights.safetensors", "more.txt", "README.md"}
    details = api.get_discussion_details("prs/model", 1)
    assert details.status == "merged" and details.target_branch == "main"
    assert details.merge_commit_oid == api.list_repo_commits("prs/model")[1].commit_id
    assert [event.type for event in details.events] == ["comment", "commit", "commit", "status-change"]
    with pytest.raises(HfHubHTTPError):
        api.upload_file(path_or_fileobj=b"late", path_in_repo="late.txt", repo_id="prs/model", revision="refs/pr/1")


def test_push_to_hub_with_create_pr(hub):
    hub.api.create_repo("prs/data", repo_type="dataset")
    info = datasets.Dataset.from_dict({"text": ["a", "b", "c"]}).push_to_hub("prs/data", create_pr=True)
    assert info.pr_revision == "refs/pr/1"
    assert hub.api.list_repo_files("prs/data", repo_type="dataset") == [".gitattributes"]
    loaded = datasets.load_dataset("prs/data", revision=info.pr_revision, split="train")
    assert loaded["text"] == ["a", "b", "c"]


def test_hf_cli_upload_with_create_pr(hub, tmp_path):
    hub.api.create_repo("prs/cli")
    (tmp_path / "notes.txt").write_text("from the cli")
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": TOKEN}
    hf = Path(sys.executable).with_name("hf")
    done = subprocess.run(
        [str(hf), "upload", "prs/cli", str(tmp_path / "notes.txt"), "notes.txt", "--create-pr"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert hub.api.list_repo_files("prs/cli", revision="refs/pr/1") == [".gitattributes", "notes.txt"]
    assert hub.api.list_repo_files("prs/cli") == [".gitattributes"]
    assert TOKEN not in done.stdout + done.stderr


def test_discussions_open_comment_close_and_list(hub):
    api = hub.api
    api.create_repo("talk/repo")
    discussion = api.create_discussion("talk/repo", title="Question", description="How?")
    assert (discussion.num, discussion.is_pull_request, discussion.events[0].content) == (1, False, "How?")
    pull = api.create_pull_request("talk/repo", title="Empty PR")
    assert pull.is_pull_request and pull.target_branch == "main"
    assert api.comment_discussion("talk/repo", 1, "Like this").content == "Like this"
    assert api.change_discussion_status("talk/repo", 1, new_status="closed").new_status == "closed"
    listed = list(api.get_repo_discussions("talk/repo"))
    assert [(d.num, d.is_pull_request, d.status) for d in listed] == [(2, True, "open"), (1, False, "closed")]
    assert [d.num for d in api.get_repo_discussions("talk/repo", discussion_type="pull_request")] == [2]
    assert [d.num for d in api.get_repo_discussions("talk/repo", discussion_status="closed")] == [1]
    assert [e.type for e in api.get_discussion_details("talk/repo", 1).events] == [
        "comment",
        "comment",
        "status-change",
    ]
    with pytest.raises(HfHubHTTPError):
        api.merge_pull_request("talk/repo", 1)


def test_merging_a_pull_request_that_conflicts_with_main_is_409(hub):
    api = hub.api
    api.create_repo("talk/conflict")
    pr = api.upload_file(path_or_fileobj=b"theirs", path_in_repo="f.txt", repo_id="talk/conflict", create_pr=True)
    api.upload_file(path_or_fileobj=b"ours", path_in_repo="f.txt", repo_id="talk/conflict")
    with pytest.raises(HfHubHTTPError) as err:
        api.merge_pull_request("talk/conflict", pr.pr_num)
    assert err.value.response.status_code == 409 and "f.txt" in str(err.value)
    assert api.get_discussion_details("talk/conflict", pr.pr_num).status == "open"


def test_branch_names_under_refs_are_refused(hub):
    hub.api.create_repo("talk/refs")
    with pytest.raises(BadRequestError):
        hub.api.create_branch("talk/refs", branch="refs/pr/1")


@pytest.mark.parametrize("num", ["0", "-1", "abc", "9" * 5000, "1/2/3"])
def test_discussion_numbers_must_be_positive_integers(hub, blob_repo, num):
    status, headers, _ = _call(hub.url, "GET", f"/api/models/ranges/blob/discussions/{num}")
    assert status in (400, 404) and headers["x-error-code"]
    status, _, _ = _call(hub.url, "POST", f"/api/models/ranges/blob/discussions/{num}/comment", {"comment": "x"}, AUTH)
    assert status in (400, 404)


# Settings and private repos ----------------------------------------------------------------------------------------
def test_private_repos_are_hidden_from_anonymous_readers(hub, tmp_path):
    api, anonymous = hub.api, HfApi(endpoint=hub.url, token=False)
    api.create_repo("secret/model", private=True)
    api.upload_file(path_or_fileobj=b"\0" * 100, path_in_repo="w.bin", repo_id="secret/model")
    assert api.repo_info("secret/model").private is True
    assert "secret/model" in [m.id for m in api.list_models(author="secret")]
    assert hf_hub_download("secret/model", "w.bin", token=TOKEN)
    reads = [
        lambda: anonymous.repo_info("secret/model"),
        lambda: anonymous.list_repo_files("secret/model"),
        lambda: anonymous.get_paths_info("secret/model", ["w.bin"]),
        lambda: anonymous.list_repo_refs("secret/model"),
        lambda: anonymous.list_repo_commits("secret/model"),
        lambda: list(anonymous.get_repo_discussions("secret/model")),
        lambda: hf_hub_download("secret/model", "w.bin", token=False, cache_dir=tmp_path),
    ]
    for read in reads:
        with pytest.raises(RepositoryNotFoundError):
            read()
    assert list(anonymous.list_models(author="secret")) == []
    missing = _call(hub.url, "GET", "/api/models/secret/absent")
    hidden = _call(hub.url, "GET", "/api/models/secret/model")
    assert hidden[0] == missing[0] == 404 and hidden[1]["x-error-code"] == "RepoNotFound"
    assert json.loads(hidden[2])["error"].replace("/model", "/absent") == json.loads(missing[2])["error"]
    oid = hashlib.sha256(b"\0" * 100).hexdigest()
    batch = {"operation": "download", "objects": [{"oid": oid, "size": 100}]}
    assert _call(hub.url, "POST", "/secret/model.git/info/lfs/objects/batch", batch)[0] == 404

    api.update_repo_settings("secret/model", private=False, gated="manual")
    info = anonymous.repo_info("secret/model")
    assert (info.private, info.gated) == (False, "manual")
    api.update_repo_settings("secret/model", gated=False, visibility="private")
    assert (api.repo_info("secret/model").private, api.repo_info("secret/model").gated) == (True, False)


def test_a_private_dataset_loads_with_the_token(hub):
    hub.api.create_repo("secret/data", repo_type="dataset", private=True)
    datasets.Dataset.from_dict({"n": [1, 2]}).push_to_hub("secret/data")
    assert datasets.load_dataset("secret/data", split="train")["n"] == [1, 2]


def test_without_a_server_token_privacy_is_only_reported(tmp_path):
    server, url = serve(tmp_path)
    try:
        api = HfApi(endpoint=url, token=False)
        api.create_repo("open/priv", private=True)
        assert api.repo_info("open/priv").private is True
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("body", [{"private": "yes"}, {"visibility": "secret"}, {"gated": "always"}, {"gated": True}])
def test_invalid_settings_are_400(hub, body):
    hub.api.create_repo("secret/settings", exist_ok=True)
    assert _call(hub.url, "PUT", "/api/models/secret/settings/settings", body, AUTH)[0] == 400


# Preupload, super-squash, listings ---------------------------------------------------------------------------------
def test_unchanged_lfs_and_regular_files_make_no_new_commit(hub):
    api = hub.api
    api.create_repo("same/files")
    weights, text = random.Random(3).randbytes(50_000), b"plain text"
    operations = [CommitOperationAdd("w.safetensors", weights), CommitOperationAdd("t.txt", text)]
    first = api.create_commit("same/files", operations, commit_message="one")
    again = [CommitOperationAdd("w.safetensors", weights), CommitOperationAdd("t.txt", text)]
    second = api.create_commit("same/files", again, commit_message="two")
    assert second.oid == first.oid and len(api.list_repo_commits("same/files")) == 2
    files = [
        {"path": "w.safetensors", "size": len(weights), "sample": ""},
        {"path": "t.txt", "size": len(text), "sample": ""},
    ]
    _, _, body = _call(hub.url, "POST", "/api/models/same/files/preupload/main", {"files": files})
    answers = {item["path"]: item for item in json.loads(body)["files"]}
    assert answers["w.safetensors"]["oid"] == hashlib.sha256(weights).hexdigest()
    assert answers["t.txt"]["oid"] == hashlib.sha1(b"blob %d\0" % len(text) + text).hexdigest()


def test_super_squash_history_keeps_the_files(hub):
    api = hub.api
    api.create_repo("squash/me")
    for i in range(3):
        api.upload_file(path_or_fileobj=f"v{i}".encode(), path_in_repo=f"f{i}.txt", repo_id="squash/me")
    api.create_tag("squash/me", tag="v1")
    api.super_squash_history("squash/me", commit_message="squashed")
    commits = api.list_repo_commits("squash/me")
    assert [c.title for c in commits] == ["squashed"]
    assert api.list_repo_files("squash/me") == [".gitattributes", "f0.txt", "f1.txt", "f2.txt"]
    assert len(api.list_repo_commits("squash/me", revision="v1")) == 4
    with pytest.raises(BadRequestError):
        api.super_squash_history("squash/me", branch="v1")
    with pytest.raises(RevisionNotFoundError):
        api.super_squash_history("squash/me", branch="nope")


def test_list_models_and_datasets_by_author_and_search(hub):
    api = hub.api
    for repo_id in ("lister/alpha-model", "lister/beta-model", "other/alpha-tool"):
        api.create_repo(repo_id)
    api.create_repo("lister/alpha-data", repo_type="dataset")
    assert [m.id for m in api.list_models(author="lister")] == ["lister/alpha-model", "lister/beta-model"]
    assert [m.id for m in api.list_models(search="ALPHA")] == ["lister/alpha-model", "other/alpha-tool"]
    assert [m.id for m in api.list_models(author="lister", search="beta")] == ["lister/beta-model"]
    assert [d.id for d in api.list_datasets(author="lister")] == ["lister/alpha-data"]
    assert len(list(api.list_models(author="lister", limit=1))) == 1


# Errors and authorisation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/no/such/route"),
        ("HEAD", "/no/such/route"),
        ("POST", "/api/nothing"),
        ("GET", "/api/models/ghost/repo"),
        ("HEAD", "/ghost/repo/resolve/main/x.txt"),
        ("GET", "/ranges/blob/resolve/main/absent.txt"),
        ("GET", "/ranges/blob/resolve/no-branch/data.bin"),
        ("GET", "/api/models/ranges/blob/discussions/99"),
        ("POST", "/api/models/ranges/blob/discussions/1/dance"),
        ("GET", "/api/models/ranges/blob/discussions/1/events"),
    ],
)
def test_every_404_names_its_error_code(hub, blob_repo, method, path):
    status, headers, _ = _call(hub.url, method, path, b"{}" if method == "POST" else b"", AUTH)
    assert status == 404 and headers["x-error-code"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/api/models/guard/repo/settings", {"private": False}),
        ("POST", "/api/models/guard/repo/super-squash/main", {"message": "x"}),
        ("POST", "/api/models/guard/repo/discussions", {"title": "t", "pullRequest": True}),
        ("POST", "/api/models/guard/repo/discussions/1/comment", {"comment": "c"}),
        ("POST", "/api/models/guard/repo/discussions/1/status", {"status": "closed"}),
        ("POST", "/api/models/guard/repo/discussions/1/merge", {}),
        ("POST", "/api/models/guard/repo/commit/main?create_pr=1", {}),
    ],
)
def test_new_write_routes_need_the_token(hub, method, path, body):
    if not hub.api.repo_exists("guard/repo"):
        hub.api.create_repo("guard/repo")
        hub.api.create_pull_request("guard/repo", title="pr")
    before = (hub.api.repo_info("guard/repo").sha, hub.api.get_discussion_details("guard/repo", 1).status)
    status, headers, _ = _call(hub.url, method, path, body)
    assert status == 401 and headers["x-error-code"] == "Unauthorized"
    assert (hub.api.repo_info("guard/repo").sha, hub.api.get_discussion_details("guard/repo", 1).status) == before
    assert len(list(hub.api.get_repo_discussions("guard/repo"))) == 1
