"""The offline Hub as the unmodified clients use it: byte ranges, repo naming, pull requests and discussions,
settings and private repos, LFS preupload answers, history squashing and repo listings."""

import os

os.environ["HF_HUB_DISABLE_XET"] = "1"

import http.client
import json
import random
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, HfFileSystem

from rlrf_hub.hub.ranges import RangeNotSatisfiable, parse_range
from rlrf_hub.hub.server import configure_clients, serve

TOKEN = "clients-write-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A token-protected server; this module's clients hold the token through `HF_TOKEN`, like a logged-in user."""
    from huggingface_hub import constants, hf_api

    root = tmp_path_factory.mktemp("clients-root")
    server, url = serve(root, token=TOKEN)
    hub_cache, datasets_cache = tmp_path_factory.mktemp("hf-hub-cache"), tmp_path_factory.mktemp("hf-datasets-cache")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_HUB_DISABLE_XET", "HF_URL_HOSTS"):
            patch.setattr(constants, name, getattr(constants, name))
        patch.setattr(hf_api.api, "endpoint", hf_api.api.endpoint)
        patch.setattr(datasets.config, "HF_ENDPOINT", datasets.config.HF_ENDPOINT)
        for name in ("HF_ENDPOINT", "HF_HUB_DISABLE_XET"):
            patch.setenv(name, os.environ.get(name, ""))
        configure_clients(url)
        patch.setenv("HF_TOKEN", TOKEN)
        patch.setenv("HF_HUB_CACHE", str(hub_cache))
        patch.setenv("HF_DATASETS_CACHE", str(datasets_cache))
        patch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", datasets_cache)
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
    """`ranges/blob` holding `data.bin` (LFS, 3 MB) and `small.txt` (a regular file)."""
    data = random.Random(1).randbytes(3 * 1024 * 1024 + 17)
    hub.api.create_repo("ranges/blob")
    hub.api.create_commit(
        "ranges/blob",
        [CommitOperationAdd("data.bin", data), CommitOperationAdd("small.txt", b"0123456789")],
        commit_message="data",
    )
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
