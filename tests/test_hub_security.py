"""Attacks on a token-protected offline Hub, sent as raw HTTP, and the real `huggingface_hub` client showing that
legitimate flows still work with the token and that writes without it get 401."""

import os

os.environ["HF_HUB_DISABLE_XET"] = "1"

import hashlib
import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote, urlsplit

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, snapshot_download
from huggingface_hub.errors import HfHubHTTPError

from rlrf_hub.httpd import LISTEN_BACKLOG, BoundedHTTPServer
from rlrf_hub.hub.server import STORE_INFO, TOKEN_ENV, resolve_token, running_server, serve
from rlrf_hub.hub.store import STALE_TMP_S, Operation, Store
from rlrf_hub.hub.validation import InvalidInputError

TOKEN = "s3cret-write-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A token-protected server over a store holding `alice/sec` (a.txt) and `paths-info/x`."""
    from huggingface_hub import constants

    root = tmp_path_factory.mktemp("secure-root")
    server, url = serve(root, token=TOKEN)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        patch.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
        api = HfApi(endpoint=url, token=TOKEN)
        api.create_repo("alice/sec")
        api.upload_file(path_or_fileobj=b"hello", path_in_repo="a.txt", repo_id="alice/sec")
        api.create_repo("paths-info/x")
        yield SimpleNamespace(server=server, url=url, root=root, api=api)
    server.shutdown()
    server.server_close()


def _call(url: str, method: str, path: str, body=b"", headers: dict | None = None) -> tuple[int, dict, bytes]:
    """One well-formed request; a dict or list body is sent as JSON. Returns (status, lower-cased headers, body)."""
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


def _raw(url: str, request: bytes) -> tuple[int, dict, bytes]:
    """Send `request` exactly as written (malformed on purpose) and parse the answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def _ndjson(*operations: dict) -> bytes:
    lines = [{"key": "header", "value": {"summary": "attack"}}, *operations]
    return b"\n".join(json.dumps(line).encode() for line in lines)


def _commit(url: str, operations: list[dict], repo: str = "alice/sec", path_suffix: str = "", headers=AUTH):
    body = _ndjson(*operations)
    return _call(url, "POST", f"/api/models/{repo}/commit/main{path_suffix}", body, headers)


def _assert_json_error(status: int, headers: dict, body: bytes, expected: int) -> str:
    assert status == expected, body
    assert headers["content-type"] == "application/json" and headers["x-error-code"] and headers["x-error-message"]
    return json.loads(body)["error"]


def _head(hub) -> tuple[str, set[str], set[str]]:
    refs = hub.api.list_repo_refs("alice/sec")
    return hub.api.model_info("alice/sec").sha, {b.name for b in refs.branches}, {t.name for t in refs.tags}


# 1. Arbitrary file read through an unchecked LFS oid ---------------------------------------------------------------
@pytest.mark.parametrize("oid", ["/etc/passwd", "../../../../etc/passwd", "A" * 64, "0" * 63 + "\n", "0" * 64])
def test_lfs_file_op_cannot_point_at_a_server_file_or_a_missing_blob(hub, oid):
    status, headers, body = _commit(hub.url, [{"key": "lfsFile", "value": {"path": "leak.bin", "oid": oid}}])
    _assert_json_error(status, headers, body, 400)
    status, _, body = _call(hub.url, "GET", "/alice/sec/resolve/main/leak.bin")
    assert status == 404 and b"root:" not in body


@pytest.mark.parametrize("operation", ["upload", "download"])
def test_lfs_batch_refuses_oids_that_are_not_sha256(hub, operation):
    batch = {"operation": operation, "objects": [{"oid": "../../../../etc/passwd", "size": 1}]}
    status, headers, body = _call(hub.url, "POST", "/alice/sec.git/info/lfs/objects/batch", batch, AUTH)
    _assert_json_error(status, headers, body, 400)
    status, headers, body = _call(hub.url, "PUT", "/lfs-upload/..%2F..%2Fetc%2Fpasswd", b"x", AUTH)
    _assert_json_error(status, headers, body, 400)


def test_store_checks_oids_and_paths_itself(tmp_path):
    store = Store(tmp_path / "root")
    store.create_repo("model", "alice/m")
    for bad in ("/etc/passwd", "../../etc/passwd", "a" * 63):
        with pytest.raises(InvalidInputError):
            store.blob_path(bad)
        with pytest.raises(InvalidInputError):
            store.has_blob(bad)
        with pytest.raises(InvalidInputError):
            store.create_commit("model", "alice/m", "main", [Operation("add", "x.bin", bad, lfs=True)], "x")
    sha256, _ = store.put_bytes(b"content")
    with pytest.raises(InvalidInputError):
        store.create_commit("model", "alice/m", "main", [Operation("add", "../x.bin", sha256)], "x")
    with pytest.raises(InvalidInputError):
        store.put_blob([b"x"], expected_sha256="../x")
    with pytest.raises(InvalidInputError):
        store.create_ref("model", "alice/m", "tags", "a" * 300, None)


# 2. Write token bypass ---------------------------------------------------------------------------------------------
def test_write_routes_need_the_token_whatever_the_path_says(hub):
    before = _head(hub)
    add = {"key": "file", "value": {"path": "pwned.txt", "content": "cHduZWQ=", "encoding": "base64"}}
    attempts = [
        ("POST", "/api/models/alice/sec/commit/main/paths-info/", _ndjson(add)),
        ("POST", "/api/models/alice/sec/tag/main/paths-info/", {"tag": "evil"}),
        ("POST", "/api/models/alice/sec/branch/evil/paths-info/", {}),
        ("DELETE", "/api/models/alice/sec/branch/main", b""),
        ("DELETE", "/api/repos/delete", {"name": "sec", "organization": "alice"}),
        ("POST", "/api/repos/create", {"name": "created", "organization": "paths-info"}),
        ("POST", "/paths-info/x.git/info/lfs/objects/batch", {"operation": "upload", "objects": [{"oid": "1" * 64}]}),
        ("PUT", f"/lfs-upload/{hashlib.sha256(b'x').hexdigest()}?size=1&sig=forged", b"x"),
    ]
    for method, path, body in attempts:
        status, headers, answer = _call(hub.url, method, path, body)
        assert _assert_json_error(status, headers, answer, 401), (method, path)
        assert b"lfs-upload" not in answer
    assert _head(hub) == before
    assert "pwned.txt" not in hub.api.list_repo_files("alice/sec")


def test_reads_stay_open_without_the_token(hub):
    sha = hashlib.sha256(b"hello").hexdigest()
    reads = [
        ("GET", "/api/models/alice/sec", b""),
        ("GET", "/api/models/alice/sec/tree/main", b""),
        ("POST", "/api/models/alice/sec/paths-info/main", {"paths": ["a.txt"]}),
        ("POST", "/api/models/alice/sec/preupload/main", {"files": [{"path": "b.txt", "size": 3, "sample": ""}]}),
        ("POST", "/api/validate-yaml", {"content": "x: 1"}),
        (
            "POST",
            "/alice/sec.git/info/lfs/objects/batch",
            {"operation": "download", "objects": [{"oid": sha, "size": 5}]},
        ),
        ("GET", "/alice/sec/resolve/main/a.txt", b""),
    ]
    for method, path, body in reads:
        status, _, answer = _call(hub.url, method, path, body)
        assert status == 200, (method, path, answer)
        assert b"lfs-upload" not in answer


def test_a_signed_upload_href_is_bound_to_its_oid_and_size(hub):
    content = b"12345"
    oid = hashlib.sha256(content).hexdigest()
    batch = {"operation": "upload", "objects": [{"oid": oid, "size": len(content)}]}
    status, _, body = _call(hub.url, "POST", "/alice/sec.git/info/lfs/objects/batch", batch, AUTH)
    href = urlsplit(json.loads(body)["objects"][0]["actions"]["upload"]["href"])
    signed = f"{href.path}?{href.query}"
    other = hashlib.sha256(b"other").hexdigest()
    status, _, _ = _call(hub.url, "PUT", signed.replace(oid, other), b"other")
    assert status == 401
    status, _, _ = _call(hub.url, "PUT", signed.replace("size=5", "size=50"), content)
    assert status == 401
    status, headers, body = _call(hub.url, "PUT", signed, content + b"-too-long")
    _assert_json_error(status, headers, body, 413)
    status, _, _ = _call(hub.url, "PUT", signed, content)
    assert status == 200 and hub.server.store.has_blob(oid)


# 3. Unsafe paths and repository ids -------------------------------------------------------------------------------
UNSAFE_PATHS = [
    "../../escape.txt",
    "a/../../b",
    "a/./b",
    "./a",
    ".git/config",
    "sub/.GIT/hooks/pre-commit",
    ".cache/huggingface/download/a.txt.metadata",
    "",
    "a//b",
    "a/",
    "/etc/passwd",
    "a\x00b",
    "a\\b",
    "a\r\nX-Injected: yes",
    "x" * 2000,
]


@pytest.mark.parametrize("path", UNSAFE_PATHS)
def test_unsafe_commit_paths_are_refused_naming_the_path(hub, path, tmp_path):
    blob = hashlib.sha256(b"hello").hexdigest()
    for operation in (
        {"key": "file", "value": {"path": path, "content": "aGk=", "encoding": "base64"}},
        {"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": blob, "size": 5}},
    ):
        status, headers, body = _commit(hub.url, [operation])
        error = _assert_json_error(status, headers, body, 400)
        assert "invalid path" in error and (repr(path) in error or len(path) > 100)
        assert "x-injected" not in headers
    folder = snapshot_download("alice/sec", endpoint=hub.url, local_dir=tmp_path / "local", token=False)
    assert sorted(p.name for p in Path(folder).iterdir() if p.name != ".cache") == [".gitattributes", "a.txt"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "name\n", "organization": "ns"},
        {"name": "x" * 300, "organization": "ns"},
        {"name": "n", "organization": "y" * 5000},
        {"name": "a--b"},
        {"name": "a..b"},
        {"name": "model.git"},
        {"name": "-dash"},
        {"name": "b/c", "organization": "a"},
        {"name": "caf\u00e9"},
    ],
)
def test_invalid_repo_ids_are_400_without_server_paths(hub, body):
    status, headers, answer = _call(hub.url, "POST", "/api/repos/create", body, AUTH)
    error = _assert_json_error(status, headers, answer, 400)
    assert "invalid repository id" in error and str(hub.root) not in answer.decode()


def test_over_long_repo_id_in_a_url_is_400_without_server_paths(hub):
    status, headers, answer = _call(hub.url, "GET", f"/api/models/{'x' * 400}/{'y' * 400}")
    _assert_json_error(status, headers, answer, 400)
    assert str(hub.root) not in answer.decode() + headers["x-error-message"] and "/repos/" not in answer.decode()


# 4. Robustness --------------------------------------------------------------------------------------------------
def _post_raw(url: str, headers: str, body: bytes = b"") -> tuple[int, dict, bytes]:
    head = f"POST /api/repos/create HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n{headers}\r\n"
    return _raw(url, head.encode() + body)


@pytest.mark.parametrize(
    "headers, body, expected",
    [
        ("Content-Length: abc\r\n", b"{}", 400),
        ("Content-Length: -1\r\n", b"{}", 400),
        ("Content-Length: 1000000000000\r\n", b"", 413),
        ("Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n", 400),
        ("Content-Length: 6\r\n", b"{nope}", 400),
        ("Content-Length: 2\r\n", b"\xff\xfe", 400),
        ("Content-Length: 2\r\n", b"{}", 400),
        ("Content-Length: 2\r\n", b"[]", 400),
        ("Content-Length: 20000\r\n", b"[" * 20000, 400),
    ],
)
def test_malformed_requests_get_a_json_4xx(hub, headers, body, expected):
    _assert_json_error(*_post_raw(hub.url, headers, body), expected)


@pytest.mark.parametrize(
    "request_bytes, expected",
    [
        (b"GET /a b HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431),
        (b"PATCH / HTTP/1.1\r\n\r\n", 501),
    ],
)
def test_requests_refused_by_http_server_itself_get_json_too(hub, request_bytes, expected):
    status, headers, body = _raw(hub.url, request_bytes)
    assert status == expected and json.loads(body)["error"] and headers["x-error-code"]


def test_missing_keys_in_bodies_are_400(hub):
    requests = [
        ("POST", "/api/models/alice/sec/tag/main", {}),
        ("POST", "/api/models/alice/sec/tag/main", {"tag": 5}),
        ("POST", "/api/models/alice/sec/preupload/main", {"files": [{"size": 1}]}),
        ("POST", "/api/models/alice/sec/preupload/main", {"files": [{"path": "a", "sample": "%%%"}]}),
        ("POST", "/alice/sec.git/info/lfs/objects/batch", {"operation": "upload", "objects": [{"oid": "1" * 64}]}),
        ("POST", "/alice/sec.git/info/lfs/objects/batch", {"operation": "steal", "objects": []}),
        ("POST", "/api/models/alice/sec/commit/main", _ndjson({"key": "file"})),
        ("POST", "/api/models/alice/sec/commit/main", _ndjson({"key": "file", "value": {"path": "a.txt"}})),
        ("POST", "/api/models/alice/sec/commit/main", _ndjson({"key": "rename", "value": {"path": "a.txt"}})),
        ("POST", "/api/models/alice/sec/commit/main", b'{"key": "header", "value": {}}\n[1, 2]'),
        ("DELETE", "/api/repos/delete", {"organization": "alice"}),
    ]
    for method, path, body in requests:
        status, headers, answer = _call(hub.url, method, path, body, AUTH)
        _assert_json_error(status, headers, answer, 400)


def test_unexpected_errors_are_500_without_paths_or_traceback(hub, monkeypatch):
    def broken(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "/srv/secret/store/refs")

    monkeypatch.setattr(hub.server.store, "refs", broken)
    status, headers, body = _call(hub.url, "GET", "/api/models/alice/sec/refs")
    error = _assert_json_error(status, headers, body, 500)
    assert "/srv/secret" not in error + headers["x-error-message"] and "Traceback" not in error


def test_bounded_workers_deep_backlog_and_idle_timeout(tmp_path):
    server, url = serve(tmp_path / "root")
    server.idle_timeout = 0.3
    parts = urlsplit(url)
    try:
        assert isinstance(server, BoundedHTTPServer) and server.request_queue_size >= LISTEN_BACKLOG
        stalls = [
            b"GET /api/whoami-v2 HTTP/1.1\r\n",
            b"POST /api/repos/create HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",
        ]
        for stall in stalls:
            with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
                sock.sendall(stall)
                start = time.monotonic()
                while sock.recv(4096):
                    pass
                assert time.monotonic() - start < 4
    finally:
        server.shutdown()
        server.server_close()


# 5. Token sources, stale uploads, the store id -----------------------------------------------------------------
def test_token_comes_from_the_flag_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert resolve_token() is None
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert resolve_token() == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    assert resolve_token(token_file=tmp_path / "token") == "from-file"
    assert resolve_token("from-flag") == "from-flag"
    with pytest.raises(ValueError):
        resolve_token("from-flag", tmp_path / "token")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        resolve_token(token_file=tmp_path / "empty")


def test_cli_token_file_keeps_the_token_out_of_ps(tmp_path):
    (tmp_path / "token").write_text(TOKEN)
    code = "import sys; from rlrf_hub.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["hub", "serve", "--root", str(tmp_path / "root"), "--token-file", str(tmp_path / "token")]
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert " at http://" in line, line
        url = line.rsplit(" at ", 1)[1].strip()
        assert TOKEN.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert _call(url, "POST", "/api/repos/create", {"name": "r", "organization": "ns"})[0] == 401
        assert _call(url, "POST", "/api/repos/create", {"name": "r", "organization": "ns"}, AUTH)[0] == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_stale_partial_uploads_are_removed_when_the_store_opens(tmp_path):
    tmp = tmp_path / "root" / "tmp"
    tmp.mkdir(parents=True)
    old, fresh, trash = tmp / "partial-old", tmp / "partial-live", tmp / "deleted-x"
    old.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y" * 100)
    (trash / "repo").mkdir(parents=True)
    long_ago = time.time() - STALE_TMP_S - 60
    for path in (old, trash):
        os.utime(path, (long_ago, long_ago))
    Store(tmp_path / "root")
    assert sorted(p.name for p in tmp.iterdir()) == ["partial-live"]


def test_store_info_reveals_no_path_and_running_server_still_recognises_its_store(hub, tmp_path):
    status, _, body = _call(hub.url, "GET", STORE_INFO)
    assert status == 200 and "root" not in json.loads(body)
    assert str(hub.root.resolve()) not in body.decode() and quote(str(hub.root)) not in body.decode()
    (hub.root / "server.json").write_text(json.dumps({"url": hub.url}))
    assert running_server(hub.root) == hub.url
    other = tmp_path / "other"
    Store(other)
    (other / "server.json").write_text(json.dumps({"url": hub.url}))
    assert running_server(other) is None
    assert Store(hub.root).id == hub.server.store.id


# The real client, with and without the token ---------------------------------------------------------------------
def test_real_client_flows_work_with_the_token_and_writes_without_it_get_401(hub, tmp_path):
    api = hub.api
    api.create_repo("bob/flows")
    api.upload_file(path_or_fileobj=b"text", path_in_repo="notes/readme.txt", repo_id="bob/flows")
    weights = os.urandom(4096)
    lfs = api.create_commit("bob/flows", [CommitOperationAdd("model.safetensors", weights)], commit_message="lfs")
    api.create_branch("bob/flows", branch="exp/one")
    api.create_tag("bob/flows", tag="v1", revision=lfs.oid)
    assert api.get_paths_info("bob/flows", ["model.safetensors"])[0].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    folder = Path(snapshot_download("bob/flows", revision="v1", endpoint=hub.url, cache_dir=tmp_path, token=False))
    assert (folder / "model.safetensors").read_bytes() == weights
    assert (folder / "notes" / "readme.txt").read_bytes() == b"text"

    anonymous = HfApi(endpoint=hub.url, token=False)
    writes = [
        lambda: anonymous.create_repo("bob/other"),
        lambda: anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="bob/flows"),
        lambda: anonymous.create_commit("bob/flows", [CommitOperationAdd("w.bin", b"\0w")], commit_message="w"),
        lambda: anonymous.create_branch("bob/flows", branch="evil"),
        lambda: anonymous.create_tag("bob/flows", tag="evil"),
        lambda: anonymous.delete_branch("bob/flows", branch="exp/one"),
        lambda: anonymous.delete_tag("bob/flows", tag="v1"),
        lambda: anonymous.delete_repo("bob/flows"),
    ]
    for write in writes:
        with pytest.raises(HfHubHTTPError) as err:
            write()
        assert err.value.response.status_code == 401
    refs = anonymous.list_repo_refs("bob/flows")
    assert {b.name for b in refs.branches} == {"main", "exp/one"} and [t.name for t in refs.tags] == ["v1"]
    assert anonymous.model_info("bob/flows").sha == lfs.oid
