"""The offline Hub against the real `huggingface_hub`, `datasets`, `transformers` and `peft` clients."""

import hashlib
import os

os.environ["HF_HUB_DISABLE_XET"] = "1"

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import pytest
import requests
import torch
from conftest import hf_clients
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from rlrf_hub.hub.server import serve
from rlrf_hub.hub.store import Store, StoreError


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """One server for the session; the clients' caches point at empty temporary folders."""
    server, url = serve(tmp_path_factory.mktemp("hub-root"))
    with hf_clients(tmp_path_factory.mktemp("hf-caches"), url):
        yield url
    server.shutdown()
    server.server_close()


@pytest.fixture
def api(hub) -> HfApi:
    return HfApi(endpoint=hub, token=False)


def _start_cli_server(root: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    code = "import sys; from rlrf_hub.cli import main; sys.exit(main(sys.argv[1:]))"
    if env:
        code = (
            "import os, sys; from rlrf_hub.hub import store; "
            "store.before_ref_update = lambda repo, commit: os._exit(9); "
            "from rlrf_hub.cli import main; sys.exit(main(sys.argv[1:]))"
        )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "hub", "serve", "--root", str(root), *extra],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    line = proc.stdout.readline()
    assert " at http://" in line, line
    return proc, line.rsplit(" at ", 1)[1].strip()


def _folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "upload"
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


def test_repos_commits_refs_and_downloads(api, hub, tmp_path):
    url = api.create_repo("alice/model-a")
    assert url.endswith("/alice/model-a") and url.repo_id == "alice/model-a"
    assert api.create_repo("alice/model-a", exist_ok=True).repo_id == "alice/model-a"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("alice/model-a")
    assert err.value.response.status_code == 409
    assert api.create_repo("alice/data-a", repo_type="dataset").repo_type == "dataset"
    api.delete_repo("alice/data-a", repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("alice/data-a")
    api.create_repo("alice/data-a", repo_type="dataset")

    weights = bytes(range(256)) * 40
    first = api.upload_folder(
        repo_id="alice/model-a", folder_path=_folder(tmp_path, {"a.txt": b"hello", "sub/w.safetensors": weights})
    )
    info = api.model_info("alice/model-a")
    assert info.sha == first.oid
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {".gitattributes", "a.txt", "sub/w.safetensors"}
    assert siblings["sub/w.safetensors"].lfs.size == len(weights) and siblings["a.txt"].lfs is None

    api.create_branch("alice/model-a", branch="feature/x")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_branch("alice/model-a", branch="feature/x")
    assert err.value.response.status_code == 409
    api.create_branch("alice/model-a", branch="feature/x", exist_ok=True)
    api.create_tag("alice/model-a", tag="v1/base", revision="feature/x")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_tag("alice/model-a", tag="v1/base")
    assert err.value.response.status_code == 409

    second = api.create_commit(
        "alice/model-a",
        [CommitOperationAdd("b.txt", b"second"), CommitOperationDelete("a.txt")],
        commit_message="replace a by b",
        revision="feature/x",
        parent_commit=first.oid,
    )
    assert api.list_repo_files("alice/model-a", revision="feature/x") == [
        ".gitattributes",
        "b.txt",
        "sub/w.safetensors",
    ]
    assert api.list_repo_files("alice/model-a", revision="v1/base") == [".gitattributes", "a.txt", "sub/w.safetensors"]
    assert api.list_repo_files("alice/model-a") == [".gitattributes", "a.txt", "sub/w.safetensors"]
    refs = api.list_repo_refs("alice/model-a")
    assert {b.name: b.target_commit for b in refs.branches} == {"main": first.oid, "feature/x": second.oid}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1/base", first.oid)]
    commits = api.list_repo_commits("alice/model-a", revision="feature/x")
    assert [c.commit_id for c in commits][:2] == [second.oid, first.oid] and commits[0].title == "replace a by b"

    tree = {e.path: e for e in api.list_repo_tree("alice/model-a", recursive=True, revision="feature/x")}
    assert set(tree) == {".gitattributes", "b.txt", "sub", "sub/w.safetensors"}
    assert [e.path for e in api.list_repo_tree("alice/model-a", path_in_repo="sub")] == ["sub/w.safetensors"]
    infos = api.get_paths_info("alice/model-a", ["b.txt", "sub", "missing"], revision="feature/x")
    assert [type(i).__name__ for i in infos] == ["RepoFile", "RepoFolder"]

    cache = tmp_path / "cache"
    for revision in ("main", "v1/base", first.oid):
        path = hf_hub_download("alice/model-a", "sub/w.safetensors", revision=revision, cache_dir=cache)
        assert Path(path).read_bytes() == weights
    assert (
        Path(hf_hub_download("alice/model-a", "b.txt", revision="feature/x", cache_dir=cache)).read_text() == "second"
    )
    snapshot = Path(snapshot_download("alice/model-a", revision=second.oid, cache_dir=tmp_path / "snap"))
    assert snapshot.name == second.oid
    assert sorted(p.name for p in snapshot.rglob("*") if p.is_file()) == [".gitattributes", "b.txt", "w.safetensors"]

    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/model-a", "a.txt", revision="feature/x", cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("alice/model-a", "b.txt", revision="nope", cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/absent")

    fs = HfFileSystem(endpoint=hub, token=False, skip_instance_cache=True)
    assert fs.info("alice/model-a/sub/w.safetensors")["size"] == len(weights)
    assert sorted(fs.glob("alice/model-a/**/*.safetensors")) == ["alice/model-a/sub/w.safetensors"]
    assert {e["name"] for e in fs.ls("alice/model-a", detail=True)} >= {"alice/model-a/a.txt", "alice/model-a/sub"}
    with fs.open("alice/model-a@v1%2Fbase/a.txt", "rb") as handle:
        assert handle.read() == b"hello"


def test_stale_parent_is_rejected_and_branch_kept(api, tmp_path):
    api.create_repo("alice/stale")
    head = api.model_info("alice/stale").sha
    moved = api.create_commit("alice/stale", [CommitOperationAdd("x.txt", b"1")], commit_message="x")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit("alice/stale", [CommitOperationAdd("y.txt", b"2")], commit_message="y", parent_commit=head)
    assert err.value.response.status_code == 412
    assert api.model_info("alice/stale").sha == moved.oid


def test_concurrent_writers_never_corrupt_the_branch(api):
    api.create_repo("alice/race")
    head = api.model_info("alice/race").sha

    def write(i: int, parent: str | None):
        try:
            op = CommitOperationAdd(f"f{i}.txt", f"{i}".encode())
            return api.create_commit("alice/race", [op], commit_message=f"c{i}", parent_commit=parent).oid
        except HfHubHTTPError as err:
            return err.response.status_code

    with ThreadPoolExecutor(4) as pool:
        with_parent = list(pool.map(write, [0, 1], [head, head]))
    assert sorted(map(type, with_parent), key=str) == [int, str] and 412 in with_parent
    with ThreadPoolExecutor(4) as pool:
        free = list(pool.map(write, [2, 3, 4, 5], [None] * 4))
    assert all(isinstance(oid, str) for oid in free)
    commits = api.list_repo_commits("alice/race")
    assert len(commits) == 1 + 1 + 4 and commits[0].commit_id == api.model_info("alice/race").sha
    files = set(api.list_repo_files("alice/race"))
    assert {"f2.txt", "f3.txt", "f4.txt", "f5.txt"} <= files and len(files & {"f0.txt", "f1.txt"}) == 1


def test_killed_mid_commit_then_restart_keeps_everything(hub, tmp_path):
    root = tmp_path / "root"
    proc, url = _start_cli_server(root)
    try:
        api = HfApi(endpoint=url, token=False)
        api.create_repo("bob/kept", repo_type="dataset")
        kept = api.upload_file(
            path_or_fileobj=b"\x00" * 5000, path_in_repo="w.bin", repo_id="bob/kept", repo_type="dataset"
        )
        api.create_tag("bob/kept", tag="iter-1", repo_type="dataset")
    finally:
        proc.terminate()
        proc.wait(10)

    crashing, crash_url = _start_cli_server(root, env={"RLRF_HUB_TEST_CRASH": "1"})
    try:
        with pytest.raises(Exception):  # noqa: B017 - the connection drops: the exact exception is the client's
            HfApi(endpoint=crash_url, token=False).upload_file(
                path_or_fileobj=b"new" * 10, path_in_repo="new.txt", repo_id="bob/kept", repo_type="dataset"
            )
        assert crashing.wait(10) == 9
    finally:
        crashing.kill() if crashing.poll() is None else None

    server, url = serve(root)
    try:
        api = HfApi(endpoint=url, token=False)
        assert api.dataset_info("bob/kept").sha == kept.oid
        assert api.list_repo_files("bob/kept", repo_type="dataset") == [".gitattributes", "w.bin"]
        assert api.list_repo_refs("bob/kept", repo_type="dataset").tags[0].target_commit == kept.oid
        path = hf_hub_download(
            "bob/kept", "w.bin", repo_type="dataset", revision="iter-1", cache_dir=tmp_path / "c", endpoint=url
        )
        assert Path(path).read_bytes() == b"\x00" * 5000
        after = api.upload_file(path_or_fileobj=b"ok", path_in_repo="new.txt", repo_id="bob/kept", repo_type="dataset")
        assert api.list_repo_commits("bob/kept", repo_type="dataset")[1].commit_id == kept.oid
        assert api.dataset_info("bob/kept").sha == after.oid
    finally:
        server.shutdown()
        server.server_close()


def test_writes_need_the_token(hub, tmp_path):
    server, url = serve(tmp_path / "root", token="s3cret")
    try:
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(endpoint=url, token=False).create_repo("carol/private")
        assert err.value.response.status_code == 401
        api = HfApi(endpoint=url, token="s3cret")
        api.create_repo("carol/private")
        api.upload_file(path_or_fileobj=b"data", path_in_repo="d.txt", repo_id="carol/private")
        api.upload_file(path_or_fileobj=b"\0lfs", path_in_repo="w.safetensors", repo_id="carol/private")
        files = HfApi(endpoint=url, token=False).list_repo_files("carol/private")
        assert files == [".gitattributes", "d.txt", "w.safetensors"]
        oid = hashlib.sha256(b"x").hexdigest()
        unsigned = requests.put(f"{url}/lfs-upload/{oid}", data=b"x", timeout=10)
        assert unsigned.status_code == 401, "an LFS upload needs the token or a signed href"
    finally:
        server.shutdown()
        server.server_close()


def test_datasets_push_and_load_by_tag_sha_and_branch(api, tmp_path):
    first = datasets.Dataset.from_dict({"x": [1, 2, 3], "y": ["a", "b", "c"]})
    pushed = first.push_to_hub("alice/stage")
    api.create_tag("alice/stage", tag="iter-1", repo_type="dataset")
    datasets.Dataset.from_dict({"x": [4, 5], "y": ["d", "e"]}).push_to_hub("alice/stage")
    api.create_branch("alice/stage", branch="exp/one", repo_type="dataset")
    datasets.DatasetDict({"train": first, "test": first.select([0])}).push_to_hub(
        "alice/stage", config_name="extra", revision="exp/one"
    )

    def load(*args, **kwargs):
        return datasets.load_dataset("alice/stage", *args, cache_dir=str(tmp_path / "ds"), **kwargs)

    assert load(revision="iter-1", split="train")["x"] == [1, 2, 3]
    assert load(revision=pushed.oid, split="train")["x"] == [1, 2, 3]
    assert load(split="train")["x"] == [4, 5]
    assert load("extra", revision="exp/one", split="test")["y"] == ["a"]


def test_transformers_and_peft_round_trip(api, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlrf_hub.models import prepare_tiny_model

    folder = prepare_tiny_model()
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.push_to_hub("alice/tiny")
    AutoTokenizer.from_pretrained(folder).push_to_hub("alice/tiny")
    api.create_tag("alice/tiny", tag="base")
    cache = tmp_path / "hf"
    loaded = AutoModelForCausalLM.from_pretrained("alice/tiny", revision="base", cache_dir=cache)
    pairs = zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    tokenizer = AutoTokenizer.from_pretrained("alice/tiny", revision="base", cache_dir=cache)
    assert tokenizer.chat_template

    adapter = get_peft_model(loaded, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter.push_to_hub("alice/tiny-lora")
    api.create_tag("alice/tiny-lora", tag="iter-1")
    base = AutoModelForCausalLM.from_pretrained("alice/tiny", revision="base", cache_dir=cache)
    restored = PeftModel.from_pretrained(base, "alice/tiny-lora", revision="iter-1", cache_dir=cache)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(restored(ids).logits, adapter(ids).logits)


def test_large_upload_streams_through_the_server(hub, tmp_path):
    """A 64 MiB LFS file goes up and down while the server process stays far below 64 MiB of peak memory."""
    proc, url = _start_cli_server(tmp_path / "root")
    try:
        api = HfApi(endpoint=url, token=False)
        api.create_repo("alice/big")
        big, chunk = tmp_path / "big.bin", os.urandom(1 << 20)
        with open(big, "wb") as out:
            for _ in range(64):
                out.write(chunk)
        api.upload_file(path_or_fileobj=str(big), path_in_repo="big.bin", repo_id="alice/big")
        info = api.get_paths_info("alice/big", ["big.bin"])[0]
        assert info.lfs is not None and info.size == 64 << 20
        path = Path(hf_hub_download("alice/big", "big.bin", cache_dir=tmp_path / "c", endpoint=url))
        assert path.stat().st_size == 64 << 20 and path.read_bytes()[-(1 << 20) :] == chunk
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak_kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
        assert peak_kib < 56 * 1024
    finally:
        proc.terminate()
        proc.wait(10)


def test_killed_mid_upload_keeps_the_repo_consistent_and_the_upload_can_be_redone(hub, tmp_path):
    """SIGKILL while a 64 MiB LFS body is streaming in: the client gets an error, and after a restart the branch
    is where it was, no partial blob is served, and the same upload succeeds."""
    root = tmp_path / "root"
    proc, url = _start_cli_server(root)
    big, chunk = tmp_path / "big.safetensors", os.urandom(1 << 20)
    with open(big, "wb") as out:
        for _ in range(64):
            out.write(chunk)
    errors: list[Exception] = []
    try:
        api = HfApi(endpoint=url, token=False)
        api.create_repo("dave/big")
        first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="a.txt", repo_id="dave/big")

        def upload() -> None:
            try:
                api.upload_file(path_or_fileobj=str(big), path_in_repo="model.safetensors", repo_id="dave/big")
            except Exception as error:  # noqa: BLE001 - whatever the client raises, it must raise
                errors.append(error)

        uploader = threading.Thread(target=upload)
        uploader.start()
        while uploader.is_alive() and not any((root / "tmp").iterdir()):
            time.sleep(0.001)
        proc.kill()
        proc.wait(10)
        uploader.join(300)
    finally:
        proc.kill() if proc.poll() is None else None
    assert errors, "the upload was cut off, the client must say so"

    server, url = serve(root)
    try:
        api = HfApi(endpoint=url, token=False)
        assert api.model_info("dave/big").sha == first.oid
        assert api.list_repo_files("dave/big") == [".gitattributes", "a.txt"]
        digest = hashlib.sha256(big.read_bytes()).hexdigest()
        assert not Store(root).has_blob(digest), "a partial body never becomes a blob"
        api.upload_file(path_or_fileobj=str(big), path_in_repo="model.safetensors", repo_id="dave/big")
        assert api.get_paths_info("dave/big", ["model.safetensors"])[0].lfs.sha256 == digest
    finally:
        server.shutdown()
        server.server_close()


def test_interrupted_or_corrupt_upload_stores_nothing(tmp_path):
    store = Store(tmp_path / "root")

    def dropped():
        yield b"x" * 1000
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        store.put_blob(dropped())
    with pytest.raises(StoreError):
        store.put_blob([b"payload"], expected_sha256="0" * 64)
    assert not any(path.is_file() for name in ("blobs", "tmp") for path in (tmp_path / "root" / name).rglob("*"))
    assert not store.has_blob("0" * 64)
