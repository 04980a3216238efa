"""An offline Hugging Face Hub: the HTTP routes that the `huggingface_hub`, `datasets`, `transformers` and `peft`
clients use.

Point the clients at it with `HF_ENDPOINT=http://127.0.0.1:PORT` and `HF_HUB_DISABLE_XET=1` (set before importing
them): LFS uploads then use the `basic` batch transfer that this server implements.

Reads are open to anyone who can reach the server, except reads of a private repository when the server has a
token; with a token, every route that changes the store needs `Authorization: Bearer TOKEN` (or, for an LFS upload,
the signed href that an authorised batch call handed out).
`ROUTES` and `READS` are the one place that says which route is which: see SECURITY.md.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, unquote, urlsplit
from urllib.request import urlopen

from ..httpd import IDLE_TIMEOUT_S, BadRequest, BoundedHTTPServer, discard_body, parse_json, read_body_chunks
from .ranges import ByteRange, RangeNotSatisfiable, parse_range
from .store import CHUNK_SIZE, STORE_ID_FILE, Commit, FileEntry, Operation, RepoNotFoundError, Store, StoreError
from .validation import CONTROL, InvalidInputError, check_oid, check_path, check_repo_id

LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".parquet",
    ".arrow",
    ".pt",
    ".pth",
    ".gguf",
    ".h5",
    ".msgpack",
    ".onnx",
    ".zip",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
MAX_JSON_BYTES = 32 * 1024 * 1024
MAX_COMMIT_LINE_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024**3
TOKEN_ENV = "RLRF_HUB_TOKEN"
USER = "offline"
DISCUSSIONS_PAGE = 50
API_LIST = re.compile(r"/api/(models|datasets)")
API_REPO = re.compile(r"/api/(models|datasets)/(?P<rest>.+)")
LFS_BATCH = re.compile(r"/(?:(datasets)/)?(?P<repo>[^/]+(?:/[^/]+)?)\.git/info/lfs/objects/batch")
HOST = re.compile(r"[A-Za-z0-9.\-]+(?::\d{1,5})?|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?")
SERVER_FILE = "server.json"
STORE_INFO = "/api/rlrf-hub/store"
API_ACTIONS = (
    "revision",
    "tree",
    "paths-info",
    "preupload",
    "commit",
    "refs",
    "commits",
    "branch",
    "tag",
    "settings",
    "super-squash",
    "discussions",
)
FIXED_ROUTES = {
    "/api/validate-yaml": "validate-yaml",
    "/api/repos/create": "create-repo",
    "/api/repos/delete": "delete-repo",
    "/api/whoami-v2": "whoami",
    STORE_INFO: "store-id",
}
# (method, action) -> handler. Every route not in READS needs the token, except the LFS batch: its body's
# `operation` decides (`download` reads, `upload` hands out upload hrefs and so needs the token).
ROUTES = {
    ("POST", "validate-yaml"): "_validate_yaml",
    ("POST", "create-repo"): "_create_repo",
    ("DELETE", "delete-repo"): "_delete_repo",
    ("GET", "whoami"): "_whoami",
    ("GET", "store-id"): "_store_id",
    ("PUT", "lfs-upload"): "_lfs_upload",
    ("POST", "lfs-batch"): "_lfs_batch",
    ("GET", "info"): "_repo_info",
    ("HEAD", "info"): "_repo_info",
    ("GET", "tree"): "_tree",
    ("POST", "paths-info"): "_paths_info",
    ("POST", "preupload"): "_preupload",
    ("POST", "commit"): "_commit",
    ("GET", "refs"): "_refs",
    ("GET", "commits"): "_commits",
    ("POST", "branch"): "_create_branch",
    ("DELETE", "branch"): "_delete_ref",
    ("POST", "tag"): "_create_tag",
    ("DELETE", "tag"): "_delete_ref",
    ("GET", "resolve"): "_resolve",
    ("HEAD", "resolve"): "_resolve",
    ("PUT", "settings"): "_update_settings",
    ("POST", "super-squash"): "_super_squash",
    ("GET", "discussions"): "_get_discussions",
    ("POST", "discussions"): "_post_discussions",
    ("GET", "list"): "_list_repos",
}
READS = frozenset(
    {key for key in ROUTES if key[0] in ("GET", "HEAD")}
    | {("POST", "validate-yaml"), ("POST", "paths-info"), ("POST", "preupload")}
)
BODY_DECIDES = frozenset({("POST", "lfs-batch")})
T = TypeVar("T")


class Unauthorized(Exception):
    """A write without the token."""


@dataclass
class Route:
    """A parsed request path: `action` names the route; `args` are the raw (still quoted) segments after it."""

    action: str
    repo_type: str = "model"
    repo_id: str = ""
    args: list[str] = field(default_factory=list)

    @property
    def revision(self) -> str | None:
        return unquote(self.args[0]) if self.args else None


def parse_route(path: str) -> Route | None:
    """The route of a request path, or None; authorisation and dispatch both use this one parse."""
    if path in FIXED_ROUTES:
        return Route(FIXED_ROUTES[path])
    if path.startswith("/lfs-upload/"):
        return Route("lfs-upload", args=[path[len("/lfs-upload/") :]])
    if match := API_LIST.fullmatch(path):
        return Route("list", match.group(1)[:-1])
    if match := LFS_BATCH.fullmatch(path):
        return Route("lfs-batch", "dataset" if match.group(1) else "model", unquote(match.group("repo")))
    if match := API_REPO.fullmatch(path):
        repo_id, action, args = _split_api(match.group("rest"))
        return Route(action if action not in ("", "revision") else "info", match.group(1)[:-1], repo_id, args)
    parts = path.strip("/").split("/")
    repo_type = "model"
    if parts[0] == "datasets":
        repo_type, parts = "dataset", parts[1:]
    for n in (2, 1):
        if len(parts) > n + 1 and parts[n] == "resolve":
            return Route("resolve", repo_type, "/".join(parts[:n]), parts[n + 1 :])
    return None


def _split_api(rest: str) -> tuple[str, str, list[str]]:
    """`ns/name/action/arg...` -> (repo_id, action, raw args); a bare `ns/name` has action ''."""
    parts = rest.split("/")
    for n in (2, 1):
        if len(parts) > n and parts[n] in API_ACTIONS:
            return "/".join(parts[:n]), parts[n], parts[n + 1 :]
    return "/".join(parts), "", []


def _is_lfs(path: str, size: int, sample: bytes) -> bool:
    return size >= LFS_MIN_SIZE or path.lower().endswith(LFS_SUFFIXES) or b"\0" in sample


def _field(body: dict, key: str, kind: type[T], required: bool = False) -> T | None:
    """`body[key]` if it has type `kind`; None when absent (400 if `required`); 400 when it has another type."""
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(400, f"missing field {key!r}")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(400, f"field {key!r} must be of type {kind.__name__}")
    return value


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(400, f"{what} is not valid base64") from None


def _count_param(query: dict[str, list[str]], name: str) -> int | None:
    raw = query.get(name, [""])[0]
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise BadRequest(400, f"{name} must be a non-negative integer")
    return int(raw)


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "replace")


def _header_value(message: str) -> str:
    """`message` made safe as one header line: no CR, LF or other control character, ASCII, bounded."""
    return CONTROL.sub(" ", message).encode("ascii", "replace").decode()[:500]


class HubServer(BoundedHTTPServer):
    """The offline Hub over one `Store`. `token` guards writes; JSON bodies are capped at `max_body` bytes and
    LFS uploads (and commit bodies, which stream to blobs like uploads) at `max_upload`."""

    idle_timeout = IDLE_TIMEOUT_S

    def __init__(
        self,
        address: tuple[str, int],
        store: Store,
        token: str | None = None,
        max_upload: int = DEFAULT_MAX_UPLOAD_BYTES,
        max_body: int = MAX_JSON_BYTES,
    ):
        super().__init__(address, HubHandler)
        self.store = store
        self.token = token
        self.max_upload = max_upload
        self.max_body = max_body
        self._upload_key = secrets.token_bytes(32)

    def upload_signature(self, oid: str, size: int | str) -> str:
        """Signs the LFS upload href handed out by an authorised batch call, for one oid and its declared size:
        the client's PUT to it carries no Authorization header, so the signature is what authorises it."""
        return hmac.new(self._upload_key, f"{oid}:{size}".encode(), hashlib.sha256).hexdigest()


class HubHandler(BaseHTTPRequestHandler):
    server: HubServer
    protocol_version = "HTTP/1.1"
    _body: Iterator[bytes] | None = None
    _answered = False

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass

    @property
    def timeout(self) -> float:
        """Seconds a connection may sit idle (between requests or mid-body) before the server drops it."""
        return self.server.idle_timeout

    # Plumbing --------------------------------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        return self.server.store

    @property
    def base_url(self) -> str:
        host = self.headers.get("Host", "")
        if not HOST.fullmatch(host):
            address, port = self.server.server_address[:2]
            host = f"{address}:{port}"
        return f"http://{host}"

    def _start(self, status: int, headers: dict) -> None:
        self._answered = True
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.end_headers()

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str = "") -> None:
        extra = {"Content-Type": content_type} if content_type else {}
        self._start(status, {**extra, **(headers or {}), "Content-Length": len(body)})
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers, "application/json")

    def _error(self, status: int, message: str, code: str) -> None:
        headers = {"X-Error-Message": _header_value(message), "X-Error-Code": code}
        if self.command in ("POST", "PUT", "DELETE"):
            headers["Connection"] = "close"
            self.close_connection = True
        self._json({"error": message}, status, headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """`http.server`'s own refusals (a malformed request line, headers too long, an unknown method) in the same
        JSON form as ours."""
        status = HTTPStatus(code)
        self.close_connection = True
        self._json({"error": message or status.phrase}, code, {"X-Error-Code": status.phrase.replace(" ", "")})

    def _body_chunks(self, limit: int) -> Iterator[bytes]:
        self._body = read_body_chunks(self.rfile, self.headers, limit)
        return self._body

    def _json_object(self) -> dict:
        data = parse_json(b"".join(self._body_chunks(self.server.max_body)))
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise BadRequest(400, "the request body must be a JSON object")
        return data

    def _drain(self) -> None:
        """Read what is left of a refused request's body (up to `max_body`) so the client reads the answer rather
        than a reset; a larger or malformed rest closes the connection after the answer."""
        if self._body is None:
            return discard_body(self, self.server.max_body)
        drained = 0
        try:
            for chunk in self._body:
                drained += len(chunk)
                if drained > self.server.max_body:
                    self.close_connection = True
                    return
        except (BadRequest, OSError):
            self.close_connection = True

    def _fail(self, status: int, message: str, code: str) -> None:
        if self._answered:
            self.close_connection = True
            return
        self._drain()
        self._error(status, message, code)

    def _authorized(self, route: Route, query: dict[str, list[str]]) -> bool:
        token = self.server.token
        given = self.headers.get("Authorization", "")
        if token is None or hmac.compare_digest(_bytes(given), _bytes(f"Bearer {token}")):
            return True
        if route.action == "lfs-upload":
            signature = self.server.upload_signature(route.args[0], query.get("size", [""])[0])
            return hmac.compare_digest(_bytes(query.get("sig", [""])[0]), _bytes(signature))
        return False

    def _require_write_access(self, route: Route, query: dict[str, list[str]]) -> None:
        if not self._authorized(route, query):
            raise Unauthorized

    def _dispatch(self) -> None:
        self._body, self._answered = None, False
        try:
            self._route()
        except Unauthorized:
            self._fail(401, "a valid token is required for writes", "Unauthorized")
        except BadRequest as err:
            self._fail(err.status, err.message, "PayloadTooLarge" if err.status == 413 else "BadRequest")
        except (StoreError, InvalidInputError) as err:
            self._fail(err.status, str(err), err.code)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - logged here; the client gets a 500 without paths or traceback
            traceback.print_exc(file=sys.stderr)
            self._fail(500, "internal server error", "InternalError")

    def _route(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        route = parse_route(url.path)
        key = (self.command, route.action if route else "")
        if route is None or key not in ROUTES:
            return self._fail(404, f"no route for {self.command} {url.path[:200]}", "NotFound")
        if key not in READS and key not in BODY_DECIDES:
            self._require_write_access(route, query)
        elif route.repo_id and not self._authorized(route, query):
            self._hide_private(route)
        getattr(self, ROUTES[key])(route, query)

    def _hide_private(self, route: Route) -> None:
        """An anonymous read of a private repo gets the answer for a missing one, as on the Hub."""
        if self.store.is_private(route.repo_type, route.repo_id):
            raise RepoNotFoundError(f"repository {route.repo_type} {route.repo_id} not found")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch  # noqa: N815

    # Handlers --------------------------------------------------------------------------------------------------
    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.base_url}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"

    def _validate_yaml(self, route: Route, query: dict) -> None:
        for _ in self._body_chunks(self.server.max_body):
            pass
        self._json({"errors": [], "warnings": []})

    def _whoami(self, route: Route, query: dict) -> None:
        self._json({"type": "user", "name": USER, "fullname": USER, "orgs": [], "auth": {}})

    def _store_id(self, route: Route, query: dict) -> None:
        self._json({"id": self.store.id})

    def _named_repo(self, body: dict) -> tuple[str, str]:
        """(repo_type, repo_id) of a create or delete body: `name`, optional `organization` (the token's user when
        absent, as on the Hub) and `type`."""
        name = _field(body, "name", str, required=True)
        organization = _field(body, "organization", str) or USER
        repo_type = _field(body, "type", str) or "model"
        return repo_type, check_repo_id(f"{organization}/{name}")

    def _create_repo(self, route: Route, query: dict) -> None:
        body = self._json_object()
        repo_type, repo_id = self._named_repo(body)
        url = self._repo_url(repo_type, repo_id)
        try:
            self.store.create_repo(repo_type, repo_id, bool(_visibility(body)))
        except StoreError as err:
            if err.status == 409:
                return self._json({"error": str(err), "url": url}, 409, {"X-Error-Message": _header_value(str(err))})
            raise
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, route: Route, query: dict) -> None:
        self.store.delete_repo(*self._named_repo(self._json_object()))
        self._json({})

    def _repo_info(self, route: Route, query: dict) -> None:
        repo_id = route.repo_id
        commit = self.store.commit_at(route.repo_type, repo_id, route.revision)
        settings = self.store.settings(route.repo_type, repo_id)
        siblings = [
            {
                "rfilename": path,
                "size": e.size,
                "blobId": e.oid,
                **({"lfs": {"size": e.size, "sha256": e.sha256, "pointerSize": len(e.pointer)}} if e.lfs else {}),
            }
            for path, e in sorted(commit.tree.items())
        ]
        self._json(
            {
                "id": repo_id,
                "_id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.id,
                "private": settings["private"],
                "disabled": False,
                "gated": settings["gated"],
                "lastModified": commit.date,
                "createdAt": commit.date,
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "siblings": siblings,
            }
        )

    def _entry_json(self, commit: Commit, path: str, expand: bool) -> dict:
        entry = commit.tree[path]
        data = {"type": "file", "path": path, "size": entry.size, "oid": entry.oid}
        if entry.lfs:
            data["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": len(entry.pointer)}
        if expand:
            data["lastCommit"] = {"id": commit.id, "title": commit.title, "date": commit.date}
        return data

    def _folder_json(self, commit: Commit, path: str, expand: bool) -> dict:
        data = {"type": "directory", "path": path, "oid": commit.id}
        if expand:
            data["lastCommit"] = {"id": commit.id, "title": commit.title, "date": commit.date}
        return data

    def _folders(self, commit: Commit) -> set[str]:
        return {path[:i] for path in commit.tree for i in range(len(path)) if path[i] == "/"}

    def _tree(self, route: Route, query: dict) -> None:
        sub = unquote("/".join(route.args[1:])).strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        expand = query.get("expand", ["false"])[0].lower() == "true"
        commit = self.store.commit_at(route.repo_type, route.repo_id, route.revision)
        folders = self._folders(commit)
        if sub and sub not in folders:
            reason = "a file, not a folder" if sub in commit.tree else "missing"
            return self._error(404, f"{sub[:200]} is {reason}", "EntryNotFound")
        prefix = f"{sub}/" if sub else ""
        entries = []
        for folder in sorted(folders):
            rel = folder[len(prefix) :]
            if folder.startswith(prefix) and rel and (recursive or "/" not in rel):
                entries.append(self._folder_json(commit, folder, expand))
        for path in sorted(commit.tree):
            rel = path[len(prefix) :]
            if path.startswith(prefix) and (recursive or "/" not in rel):
                entries.append(self._entry_json(commit, path, expand))
        self._json(entries)

    def _paths_info_form(self) -> dict[str, list]:
        """The paths-info body: the form `huggingface_hub` sends, or the same fields as JSON."""
        if "application/json" in self.headers.get("Content-Type", ""):
            return {key: value if isinstance(value, list) else [value] for key, value in self._json_object().items()}
        body = b"".join(self._body_chunks(self.server.max_body))
        return parse_qs(body.decode("ascii", "replace"))

    def _paths_info(self, route: Route, query: dict) -> None:
        form = self._paths_info_form()
        paths = form.get("paths", [])
        if not all(isinstance(path, str) for path in paths):
            raise BadRequest(400, "paths must be strings")
        expand = str(form.get("expand", ["False"])[0]).lower() == "true"
        commit = self.store.commit_at(route.repo_type, route.repo_id, route.revision)
        folders = self._folders(commit)
        result = []
        for path in paths:
            path = path.strip("/")
            if path in commit.tree:
                result.append(self._entry_json(commit, path, expand))
            elif path in folders:
                result.append(self._folder_json(commit, path, expand))
        self._json(result)

    def _preupload(self, route: Route, query: dict) -> None:
        files = _field(self._json_object(), "files", list) or []
        commit = self.store.commit_at(route.repo_type, route.repo_id, route.revision)
        answers = []
        for item in files:
            if not isinstance(item, dict):
                raise BadRequest(400, "each entry of files must be an object")
            path = check_path(_field(item, "path", str, required=True))
            sample = _b64(_field(item, "sample", str) or "", f"sample of {path}")
            mode = "lfs" if _is_lfs(path, _field(item, "size", int) or 0, sample) else "regular"
            oid = self._remote_oid(commit.tree.get(path), mode)
            answers.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._json({"files": answers, "commitOid": commit.id})

    def _remote_oid(self, entry: FileEntry | None, mode: str) -> str | None:
        """The id the client compares with its own to skip an unchanged file: the content's sha256 for an LFS
        upload, the git blob id of the content for a regular one."""
        if entry is None:
            return None
        if mode == "lfs":
            return entry.sha256
        return self.store.content_git_oid(entry.sha256) if entry.lfs else entry.oid

    def _lfs_batch(self, route: Route, query: dict) -> None:
        body = self._json_object()
        operation = _field(body, "operation", str) or "upload"
        if operation not in ("upload", "download"):
            raise BadRequest(400, f"unknown LFS operation {operation[:40]!r}")
        if operation == "upload":
            self._require_write_access(route, query)
        if not self.store.repo_exists(route.repo_type, route.repo_id):
            return self._error(404, f"repository {route.repo_id} not found", "RepoNotFound")
        objects = []
        for obj in _field(body, "objects", list) or []:
            if not isinstance(obj, dict):
                raise BadRequest(400, "each LFS object must be an object")
            oid, size = check_oid(obj.get("oid")), _field(obj, "size", int, required=True)
            if size < 0:
                raise BadRequest(400, "an LFS object's size must not be negative")
            objects.append(self._lfs_object(operation, oid, size))
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_object(self, operation: str, oid: str, size: int) -> dict:
        item: dict = {"oid": oid, "size": size}
        if self.store.has_blob(oid):
            return item
        if operation == "download":
            item["error"] = {"code": 404, "message": "object not found"}
        elif size > self.server.max_upload:
            item["error"] = {"code": 413, "message": f"object is over the limit of {self.server.max_upload} bytes"}
        else:
            signature = self.server.upload_signature(oid, size)
            item["actions"] = {"upload": {"href": f"{self.base_url}/lfs-upload/{oid}?size={size}&sig={signature}"}}
        return item

    def _lfs_upload(self, route: Route, query: dict) -> None:
        oid = check_oid(route.args[0])
        size = _count_param(query, "size")
        limit = self.server.max_upload if size is None else min(size, self.server.max_upload)
        self.store.put_blob(self._body_chunks(limit), expected_sha256=oid)
        self._json({})

    def _commit(self, route: Route, query: dict) -> None:
        store, repo_type, repo_id = self.store, route.repo_type, route.repo_id
        branch = route.revision or "main"
        store.commit_at(repo_type, repo_id, branch)
        create_pr = _flag(query, "create_pr")
        header: dict = {}
        operations: list[Operation] = []
        for number, item in enumerate(self._lines(), 1):
            key = _field(item, "key", str, required=True)
            value = _field(item, "value", dict, required=True)
            if key == "header":
                header = value
            else:
                operations.append(self._operation(key, value, number))
        title = _field(header, "summary", str) or "update"
        description = _field(header, "description", str) or ""
        parent = _field(header, "parentCommit", str)
        pr_url = None
        if create_pr:
            commit_id, num = store.create_pull_request(
                repo_type, repo_id, branch, operations, title, description, parent, USER
            )
            pr_url = f"{self._repo_url(repo_type, repo_id)}/discussions/{num}"
        else:
            commit_id = store.create_commit(repo_type, repo_id, branch, operations, title, description, parent)
        self._json(
            {
                "commitUrl": f"{self._repo_url(repo_type, repo_id)}/commit/{commit_id}",
                "commitOid": commit_id,
                "pullRequestUrl": pr_url,
                "success": True,
            }
        )

    def _operation(self, key: str, value: dict, number: int) -> Operation:
        """One commit line as an `Operation`; a regular file's content is stored as a blob right away."""
        path = _field(value, "path", str, required=True)
        if key == "file":
            check_path(path)
            if (_field(value, "encoding", str) or "base64") != "base64":
                raise BadRequest(400, f"line {number}: only base64 content is supported")
            content = _b64(_field(value, "content", str, required=True), f"line {number}: content of {path}")
            return Operation("add", path, self.store.put_bytes(content)[0])
        if key == "lfsFile":
            if (_field(value, "algo", str) or "sha256") != "sha256":
                raise BadRequest(400, f"line {number}: only sha256 LFS oids are supported")
            return Operation("add", check_path(path), check_oid(value.get("oid")), lfs=True)
        if key == "deletedFile":
            return Operation("delete", path)
        if key == "deletedFolder":
            return Operation("delete_folder", path)
        raise BadRequest(400, f"line {number}: unsupported commit operation {key[:40]!r}")

    def _lines(self) -> Iterator[dict]:
        """The NDJSON commit body, one JSON object per line, read in chunks: a line holds at most one regular
        (small) file, so `MAX_COMMIT_LINE_BYTES` bounds memory while the body itself may be large."""
        pending = b""
        for chunk in self._body_chunks(self.server.max_upload):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > MAX_COMMIT_LINE_BYTES:
                raise BadRequest(413, f"a commit line is over the limit of {MAX_COMMIT_LINE_BYTES} bytes")
            yield from (_commit_line(line) for line in lines if line.strip())
        if pending.strip():
            yield _commit_line(pending)

    def _refs(self, route: Route, query: dict) -> None:
        refs = self.store.refs(route.repo_type, route.repo_id)

        def fmt(kind: str, items: dict) -> list[dict]:
            return [{"name": k, "ref": f"refs/{kind}/{k}", "targetCommit": v} for k, v in items.items()]

        pull_requests = refs["prs"] if _flag(query, "include_prs") else {}
        self._json(
            {
                "branches": fmt("heads", refs["branches"]),
                "tags": fmt("tags", refs["tags"]),
                "converts": [],
                "pullRequests": [{"name": k, "ref": k, "targetCommit": v} for k, v in pull_requests.items()],
            }
        )

    def _commits(self, route: Route, query: dict) -> None:
        commits = self.store.history(route.repo_type, route.repo_id, route.revision)
        self._json(
            [
                {
                    "id": c.id,
                    "title": c.title,
                    "message": c.message,
                    "date": c.date,
                    "authors": [{"user": "offline"}],
                    "parents": c.parents,
                }
                for c in commits
            ]
        )

    def _ref_name(self, route: Route) -> str:
        if not route.revision:
            raise BadRequest(400, f"a {route.action} name is required")
        return route.revision

    def _create_branch(self, route: Route, query: dict) -> None:
        name = self._ref_name(route)
        starting_point = _field(self._json_object(), "startingPoint", str)
        self.store.create_ref(route.repo_type, route.repo_id, "heads", name, starting_point)
        self._json({})

    def _create_tag(self, route: Route, query: dict) -> None:
        revision = self._ref_name(route)
        tag = _field(self._json_object(), "tag", str, required=True)
        self.store.create_ref(route.repo_type, route.repo_id, "tags", tag, revision)
        self._json({})

    def _delete_ref(self, route: Route, query: dict) -> None:
        kind = "heads" if route.action == "branch" else "tags"
        self.store.delete_ref(route.repo_type, route.repo_id, kind, self._ref_name(route))
        self._json({})

    def _update_settings(self, route: Route, query: dict) -> None:
        body = self._json_object()
        changes: dict = {}
        if (private := _visibility(body)) is not None:
            changes["private"] = private
        if "gated" in body:
            if body["gated"] not in ("auto", "manual", False):
                raise BadRequest(400, "gated must be 'auto', 'manual' or false")
            changes["gated"] = body["gated"]
        self._json(self.store.update_settings(route.repo_type, route.repo_id, changes))

    def _super_squash(self, route: Route, query: dict) -> None:
        title = _field(self._json_object(), "message", str) or "Super-squash"
        commit_id = self.store.squash_history(route.repo_type, route.repo_id, route.revision or "main", title)
        self._json({"commitId": commit_id})

    def _list_repos(self, route: Route, query: dict) -> None:
        """`GET /api/models` or `/api/datasets`: `author` is the namespace, `search` a case-insensitive part of the
        id; private repos only with the token."""
        author, search = query.get("author", [""])[0], query.get("search", [""])[0].lower()
        limit = _count_param(query, "limit")
        show_private = self._authorized(route, query)
        found = []
        for repo_id in self.store.list_repos(route.repo_type):
            if (author and repo_id.split("/")[0] != author) or search not in repo_id.lower():
                continue
            if show_private or not self.store.is_private(route.repo_type, repo_id):
                found.append(self._listed(route.repo_type, repo_id))
        self._json(found[:limit])

    def _listed(self, repo_type: str, repo_id: str) -> dict:
        commit = self.store.commit_at(repo_type, repo_id, None)
        settings = self.store.settings(repo_type, repo_id)
        return {
            "id": repo_id,
            "_id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.id,
            "private": settings["private"],
            "gated": settings["gated"],
            "lastModified": commit.date,
            "tags": [],
            "downloads": 0,
            "likes": 0,
        }

    def _get_discussions(self, route: Route, query: dict) -> None:
        """`GET .../discussions` lists them, 50 a page (`p`); `.../discussions/N` shows one with its events."""
        if len(route.args) > 1:
            return self._error(404, "no such discussion resource", "NotFound")
        if route.args:
            return self._json(self._discussion_json(route, self._discussion_number(route)))
        records = [
            record for record in self.store.discussions(route.repo_type, route.repo_id) if _matches(record, query)
        ]
        page = _count_param(query, "p") or 0
        start = page * DISCUSSIONS_PAGE
        shown = [self._discussion_summary(route, record) for record in records[start : start + DISCUSSIONS_PAGE]]
        self._json({"discussions": shown, "count": len(records), "start": start})

    def _post_discussions(self, route: Route, query: dict) -> None:
        """`POST .../discussions` opens one; `.../discussions/N/{comment,status,merge}` changes it."""
        body = self._json_object()
        if not route.args:
            return self._open_discussion(route, body)
        num = self._discussion_number(route)
        action = route.args[1] if len(route.args) == 2 else ""
        repo = (route.repo_type, route.repo_id)
        if action == "comment":
            event = self.store.comment_discussion(*repo, num, _field(body, "comment", str, required=True), USER)
            return self._json({"newMessage": event})
        if action == "status":
            status = _field(body, "status", str, required=True)
            if status not in ("open", "closed"):
                raise BadRequest(400, "status must be 'open' or 'closed'")
            comment = _field(body, "comment", str) or ""
            return self._json({"newStatus": self.store.set_discussion_status(*repo, num, status, USER, comment)})
        if action == "merge":
            self.store.merge_pull_request(*repo, num, USER, _field(body, "comment", str) or "")
            return self._json({})
        self._error(404, f"no discussion action {action[:40]!r}", "NotFound")

    def _open_discussion(self, route: Route, body: dict) -> None:
        title = _field(body, "title", str, required=True).strip()
        if not title:
            raise BadRequest(400, "a discussion needs a title")
        description = _field(body, "description", str) or ""
        pull_request = bool(_field(body, "pullRequest", bool))
        num = self.store.create_discussion(route.repo_type, route.repo_id, title, description, USER, pull_request)
        self._json({"num": num, "url": f"{self._repo_url(route.repo_type, route.repo_id)}/discussions/{num}"})

    def _discussion_number(self, route: Route) -> int:
        raw = route.args[0]
        if len(route.args) > 2 or not (raw.isascii() and raw.isdigit() and len(raw) <= 9 and int(raw) > 0):
            raise BadRequest(400, "a discussion number must be a positive integer")
        return int(raw)

    def _discussion_summary(self, route: Route, record: dict) -> dict:
        keys = ("num", "title", "status", "isPullRequest", "createdAt", "author")
        return {**{key: record[key] for key in keys}, "repo": {"name": route.repo_id, "type": route.repo_type}}

    def _discussion_json(self, route: Route, num: int) -> dict:
        record = self.store.discussion(route.repo_type, route.repo_id, num)
        data = {**self._discussion_summary(route, record), "events": record["events"]}
        if record["isPullRequest"]:
            data.update({"changes": record["changes"], "filesWithConflicts": [], "diff": ""})
        return data

    def _resolve(self, route: Route, query: dict) -> None:
        filename = "/".join(unquote(part) for part in route.args[1:])
        commit = self.store.commit_at(route.repo_type, route.repo_id, route.revision)
        entry = commit.tree.get(filename)
        if entry is None:
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit.id})
        headers = {
            "X-Repo-Commit": commit.id,
            "ETag": f'"{entry.sha256 if entry.lfs else entry.oid}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": entry.size})
        try:
            wanted = parse_range(self.headers.get("Range"), entry.size)
        except RangeNotSatisfiable:
            headers = {**headers, "Content-Range": f"bytes */{entry.size}"}
            return self._send(416, b"", {**headers, "X-Error-Code": "RangeNotSatisfiable"})
        self._send_blob(entry, headers, wanted)

    def _send_blob(self, entry: FileEntry, headers: dict, wanted: ByteRange | None) -> None:
        """The file, or the byte range `wanted` of it (206); a HEAD gets the same status and headers."""
        start, length = (wanted.start, wanted.length) if wanted else (0, entry.size)
        if wanted:
            headers = {**headers, "Content-Range": wanted.content_range}
        with self.store.open_blob(entry.sha256) as blob:
            blob.seek(start)
            self._start(206 if wanted else 200, {**headers, "Content-Length": length})
            while self.command == "GET" and length > 0 and (chunk := blob.read(min(CHUNK_SIZE, length))):
                self.wfile.write(chunk)
                length -= len(chunk)


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, [""])[0].lower() in ("1", "true")


def _matches(record: dict, query: dict[str, list[str]]) -> bool:
    """Whether a discussion passes the `type` (discussion or pull_request), `status` and `author` filters."""
    kind, status, author = (query.get(key, ["all"])[0] for key in ("type", "status", "author"))
    is_pr = record["isPullRequest"]
    return (
        kind in ("all", "pull_request" if is_pr else "discussion")
        and status in ("all", record["status"])
        and author in ("all", record["author"]["name"])
    )


def _visibility(body: dict) -> bool | None:
    """Whether `body` asks for a private repo: `visibility` ("public" or "private", sent by current clients) or
    the older boolean `private`; None when it says neither."""
    visibility = _field(body, "visibility", str)
    if visibility is None:
        return _field(body, "private", bool)
    if visibility not in ("public", "private"):
        raise BadRequest(400, "visibility must be 'public' or 'private'")
    return visibility == "private"


def _commit_line(line: bytes) -> dict:
    item = parse_json(line, "a commit line")
    if not isinstance(item, dict):
        raise BadRequest(400, "each commit line must be a JSON object")
    return item


def serve(
    root: str | Path,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    max_upload: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> tuple[HubServer, str]:
    """Start a server over `root` in a daemon thread; returns it and its URL (call `server.shutdown()` to stop)."""
    server = HubServer((host, port), Store(root), token, max_upload)
    threading.Thread(target=server.serve_forever, daemon=True, name="rlrf-hub-server").start()
    return server, f"http://{host}:{server.server_address[1]}"


def run_forever(
    root: str | Path,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    max_upload: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> None:
    """Serve until interrupted, announcing the URL in `<root>/server.json` so runs over the same store reuse it."""
    server = HubServer((host, port), Store(root), token, max_upload)
    url = f"http://{host}:{server.server_address[1]}"
    announcement = Path(root) / SERVER_FILE
    _write_json(announcement, {"url": url, "pid": os.getpid()})
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host} without a token: anyone who can reach it can write", file=sys.stderr)
    print(f"offline Hub serving {Path(root).resolve()} at {url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if running_server(root) is None:
            announcement.unlink(missing_ok=True)


def running_server(root: str | Path) -> str | None:
    """The URL of a live `rlrf-hub hub serve` over `root`, if `<root>/server.json` names one that answers with the
    id of this store (an id, not the path, so that anonymous clients do not learn where the store lives)."""
    try:
        url = json.loads((Path(root) / SERVER_FILE).read_text())["url"]
        expected = (Path(root) / STORE_ID_FILE).read_text().strip()
        if not url.startswith("http://"):
            return None
        with urlopen(f"{url}{STORE_INFO}", timeout=2) as response:
            served = json.load(response)["id"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return url if served == expected else None


def resolve_token(token: str | None = None, token_file: str | os.PathLike | None = None) -> str | None:
    """The write token from `--token`, else `--token-file`, else `$RLRF_HUB_TOKEN`; None when none is given.

    `--token` shows in the process list to every user of the machine; the file and the variable do not.
    """
    if token and token_file:
        raise ValueError("give the token with --token or --token-file, not both")
    if token_file:
        text = Path(token_file).read_text().strip()
        if not text:
            raise ValueError(f"the token file {token_file} is empty")
        return text
    return token or os.environ.get(TOKEN_ENV) or None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `rlrf-hub hub serve`."""
    parser.add_argument("--root", required=True, help="folder holding the repositories (created if missing)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: 0, a free one; the URL is printed)")
    parser.add_argument(
        "--token",
        default=None,
        help="require `Authorization: Bearer TOKEN` for writes; other users see it in `ps`, so prefer "
        "$RLRF_HUB_TOKEN or --token-file",
    )
    parser.add_argument("--token-file", default=None, help="read the write token from this file")
    parser.add_argument(
        "--max-upload-bytes", type=int, default=None, help="largest LFS file or commit body accepted (default: 50 GiB)"
    )


def serve_command(args: argparse.Namespace, rest: list[str]) -> int:
    try:
        token = resolve_token(args.token, args.token_file)
    except (OSError, ValueError) as err:
        print(f"rlrf-hub hub serve: error: {err}", file=sys.stderr)
        return 2
    run_forever(args.root, args.host, args.port, token, args.max_upload_bytes or DEFAULT_MAX_UPLOAD_BYTES)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m rlrf_hub.hub.server ARGS` is `rlrf-hub hub serve ARGS`."""
    parser = argparse.ArgumentParser(prog="rlrf-hub hub serve", description="The offline Hugging Face Hub.")
    add_serve_arguments(parser)
    return serve_command(parser.parse_args(argv), [])


def configure_clients(url: str) -> None:
    """Point the already-imported (or future) HF clients of this process at `url` and turn Xet uploads off.

    Some modules copy the endpoint when imported (`constants.HUGGINGFACE_CO_URL_TEMPLATE`, `datasets.config`, the
    module-level `HfApi`), so setting `HF_ENDPOINT` after an HF import is not enough on its own.
    """
    url = url.rstrip("/")
    os.environ["HF_ENDPOINT"] = url
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    from huggingface_hub import constants, hf_api

    constants.ENDPOINT = url
    constants.HUGGINGFACE_CO_URL_TEMPLATE = url + "/{repo_id}/resolve/{revision}/{filename}"
    constants.HF_HUB_DISABLE_XET = True
    constants.HF_URL_HOSTS = constants.HF_URL_HOSTS | {urlsplit(url).hostname}
    hf_api.api.endpoint = url
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_ENDPOINT = url


if __name__ == "__main__":
    sys.exit(main())
