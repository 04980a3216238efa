"""An offline Hugging Face Hub: the HTTP routes that the `huggingface_hub`, `datasets`, `transformers` and `peft`
clients use.

Point the clients at it with `HF_ENDPOINT=http://127.0.0.1:PORT` and `HF_HUB_DISABLE_XET=1` (set before importing
them): LFS uploads then use the `basic` batch transfer that this server implements.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from urllib.request import urlopen

from .store import CHUNK_SIZE, Commit, Operation, Store, StoreError

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
API_REPO = re.compile(r"^/api/(models|datasets)/(?P<rest>.+)$")
LFS_BATCH = re.compile(r"^/(?:(datasets)/)?(?P<repo>[^/]+(?:/[^/]+)?)\.git/info/lfs/objects/batch$")
SERVER_FILE = "server.json"
STORE_INFO = "/api/rlrf-hub/store"
API_ACTIONS = ("revision", "tree", "paths-info", "preupload", "commit", "refs", "commits", "branch", "tag")


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: Store, token: str | None = None):
        super().__init__(address, HubHandler)
        self.store = store
        self.token = token
        self._upload_key = secrets.token_bytes(32)

    def upload_signature(self, oid: str) -> str:
        """Signs the LFS upload href handed out by an authorised batch call: the client's PUT to it carries no
        Authorization header, so the signature is what authorises it."""
        return hmac.new(self._upload_key, oid.encode(), hashlib.sha256).hexdigest()


def _split_api(rest: str) -> tuple[str, str, list[str]]:
    """`ns/name/action/arg...` -> (repo_id, action, raw args); a bare `ns/name` has action ''."""
    parts = rest.split("/")
    for n in (2, 1):
        if len(parts) > n and parts[n] in API_ACTIONS:
            return "/".join(parts[:n]), parts[n], parts[n + 1 :]
    return "/".join(parts), "", []


def _is_lfs(path: str, size: int, sample: bytes) -> bool:
    return size >= LFS_MIN_SIZE or path.lower().endswith(LFS_SUFFIXES) or b"\0" in sample


class HubHandler(BaseHTTPRequestHandler):
    server: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass

    # Plumbing --------------------------------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        return self.server.store

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{self.headers.get('Host') or f'{host}:{port}'}"

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str = "") -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers, "application/json")

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": message.replace("\n", " ").encode("ascii", "replace").decode()}
        if self.command in ("POST", "PUT", "DELETE"):
            headers["Connection"] = "close"
            self.close_connection = True
        if code:
            headers["X-Error-Code"] = code
        self._json({"error": message}, status, headers)

    def _body_chunks(self):
        """The request body as chunks, for both `Content-Length` and `Transfer-Encoding: chunked`."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                yield from self._read_exactly(size)
                self.rfile.readline()
        yield from self._read_exactly(int(self.headers.get("Content-Length") or 0))

    def _read_exactly(self, size: int):
        remaining = size
        while remaining:
            chunk = self.rfile.read(min(remaining, CHUNK_SIZE))
            if not chunk:
                raise ConnectionError("client closed the connection mid-body")
            remaining -= len(chunk)
            yield chunk

    def _body(self) -> bytes:
        return b"".join(self._body_chunks())

    def _authorized(self) -> bool:
        token = self.server.token
        if token is None or hmac.compare_digest(self.headers.get("Authorization", ""), f"Bearer {token}"):
            return True
        url = urlsplit(self.path)
        if self.command == "PUT" and url.path.startswith("/lfs-upload/"):
            signature = parse_qs(url.query).get("sig", [""])[0]
            return hmac.compare_digest(signature, self.server.upload_signature(url.path.rsplit("/", 1)[-1]))
        return False

    def _dispatch(self, write: bool) -> None:
        try:
            if write and not self._authorized():
                self._body()
                self._error(401, "a valid token is required for writes", "Unauthorized")
                return
            self._route()
        except StoreError as err:
            self._error(err.status, str(err), err.code)
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True
        except Exception as err:  # noqa: BLE001 - reported to the client as a 500
            self._error(500, f"{type(err).__name__}: {err}")

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch(write=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(write=False)

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        read_only = path == "/api/validate-yaml" or "/paths-info/" in path
        self._dispatch(write=not read_only)

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch(write=True)

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch(write=True)

    # Routing ---------------------------------------------------------------------------------------------------
    def _route(self) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        method = self.command
        if path == "/api/validate-yaml" and method == "POST":
            self._body()
            return self._json({"errors": [], "warnings": []})
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(json.loads(self._body() or b"{}"))
        if path == "/api/repos/delete" and method == "DELETE":
            body = json.loads(self._body() or b"{}")
            repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
            self.store.delete_repo(body.get("type") or "model", repo_id)
            return self._json({})
        if path == STORE_INFO:
            return self._json({"root": str(self.store.root.resolve())})
        if path == "/api/whoami-v2":
            return self._json({"type": "user", "name": "offline", "fullname": "offline", "orgs": [], "auth": {}})
        if path.startswith("/lfs-upload/") and method == "PUT":
            return self._lfs_upload(path.rsplit("/", 1)[-1])
        if match := LFS_BATCH.match(path):
            repo_type = "dataset" if match.group(1) else "model"
            return self._lfs_batch(repo_type, unquote(match.group("repo")), json.loads(self._body() or b"{}"))
        if match := API_REPO.match(path):
            repo_type = match.group(1)[:-1]
            repo_id, action, args = _split_api(match.group("rest"))
            return self._api(method, repo_type, repo_id, action, args, query)
        parts = path.strip("/").split("/")
        repo_type = "model"
        if parts and parts[0] == "datasets":
            repo_type, parts = "dataset", parts[1:]
        for n in (2, 1):
            if len(parts) > n + 1 and parts[n] == "resolve" and method in ("GET", "HEAD"):
                filename = "/".join(unquote(part) for part in parts[n + 2 :])
                return self._resolve(repo_type, "/".join(parts[:n]), unquote(parts[n + 1]), filename)
        self._error(404, f"no route for {method} {path}")

    def _api(self, method: str, repo_type: str, repo_id: str, action: str, args: list[str], query: dict) -> None:
        store = self.store
        revision = unquote(args[0]) if args else None
        if action in ("", "revision") and method == "GET":
            return self._repo_info(repo_type, repo_id, revision)
        if action == "tree" and method == "GET":
            sub = unquote("/".join(args[1:])).strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            expand = query.get("expand", ["false"])[0].lower() == "true"
            return self._tree(repo_type, repo_id, revision, sub, recursive, expand)
        if action == "paths-info" and method == "POST":
            body = self._body()
            if "application/json" in self.headers.get("Content-Type", ""):
                form = {
                    key: value if isinstance(value, list) else [str(value)]
                    for key, value in json.loads(body or b"{}").items()
                }
            else:
                form = parse_qs(body.decode())
            paths = form.get("paths", [])
            expand = form.get("expand", ["False"])[0].lower() == "true"
            return self._paths_info(repo_type, repo_id, revision, paths, expand)
        if action == "preupload" and method == "POST":
            return self._preupload(repo_type, repo_id, revision, json.loads(self._body() or b"{}"))
        if action in ("preupload", "commit") and query.get("create_pr"):
            raise StoreError("pull requests are not supported by the offline Hub")
        if action == "commit" and method == "POST":
            return self._commit(repo_type, repo_id, revision or "main")
        if action == "refs" and method == "GET":
            refs = store.refs(repo_type, repo_id)

            def fmt(kind: str, items: dict) -> list[dict]:
                return [{"name": k, "ref": f"refs/{kind}/{k}", "targetCommit": v} for k, v in items.items()]

            return self._json(
                {
                    "branches": fmt("heads", refs["branches"]),
                    "tags": fmt("tags", refs["tags"]),
                    "converts": [],
                    "pullRequests": [],
                }
            )
        if action == "commits" and method == "GET":
            commits = store.history(repo_type, repo_id, revision)
            return self._json(
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
        if action in ("branch", "tag") and revision:
            kind = "heads" if action == "branch" else "tags"
            body = json.loads(self._body() or b"{}")
            if method == "DELETE":
                store.delete_ref(repo_type, repo_id, kind, revision)
            elif action == "branch":
                store.create_ref(repo_type, repo_id, kind, revision, body.get("startingPoint"))
            else:
                store.create_ref(repo_type, repo_id, kind, body["tag"], revision)
            return self._json({})
        self._error(404, f"no route for {method} {action}")

    # Handlers --------------------------------------------------------------------------------------------------
    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.base_url}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"

    def _create_repo(self, body: dict) -> None:
        repo_type = body.get("type") or "model"
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        url = self._repo_url(repo_type, repo_id)
        try:
            self.store.create_repo(repo_type, repo_id)
        except StoreError as err:
            if err.status == 409:
                return self._json({"error": str(err), "url": url}, 409, {"X-Error-Message": str(err)})
            raise
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str | None) -> None:
        commit = self.store.commit_at(repo_type, repo_id, revision)
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
                "private": False,
                "disabled": False,
                "gated": False,
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

    def _tree(self, repo_type: str, repo_id: str, revision: str | None, sub: str, recursive: bool, expand: bool):
        commit = self.store.commit_at(repo_type, repo_id, revision)
        folders = self._folders(commit)
        if sub and sub not in folders:
            reason = "a file, not a folder" if sub in commit.tree else "missing"
            return self._error(404, f"{sub} is {reason}", "EntryNotFound")
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

    def _paths_info(self, repo_type: str, repo_id: str, revision: str | None, paths: list[str], expand: bool):
        commit = self.store.commit_at(repo_type, repo_id, revision)
        folders = self._folders(commit)
        result = []
        for path in paths:
            path = path.strip("/")
            if path in commit.tree:
                result.append(self._entry_json(commit, path, expand))
            elif path in folders:
                result.append(self._folder_json(commit, path, expand))
        self._json(result)

    def _preupload(self, repo_type: str, repo_id: str, revision: str | None, body: dict) -> None:
        commit = self.store.commit_at(repo_type, repo_id, revision)
        files = []
        for item in body.get("files", []):
            sample = base64.b64decode(item.get("sample", ""))
            entry = commit.tree.get(item["path"])
            mode = "lfs" if _is_lfs(item["path"], item.get("size", 0), sample) else "regular"
            files.append(
                {"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": entry.oid if entry else None}
            )
        self._json({"files": files, "commitOid": commit.id})

    def _lfs_batch(self, repo_type: str, repo_id: str, body: dict) -> None:
        if not self.store.repo_exists(repo_type, repo_id):
            return self._error(404, f"repository {repo_id} not found", "RepoNotFound")
        objects = []
        for obj in body.get("objects", []):
            item = {"oid": obj["oid"], "size": obj["size"]}
            if not self.store.has_blob(obj["oid"]):
                signature = self.server.upload_signature(obj["oid"])
                item["actions"] = {"upload": {"href": f"{self.base_url}/lfs-upload/{obj['oid']}?sig={signature}"}}
            objects.append(item)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_upload(self, oid: str) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", oid):
            return self._error(400, "invalid oid")
        self.store.put_blob(self._body_chunks(), expected_sha256=oid)
        self._json({})

    def _commit(self, repo_type: str, repo_id: str, raw_revision: str) -> None:
        branch = unquote(raw_revision)
        store = self.store
        store.commit_at(repo_type, repo_id, branch)
        header: dict = {}
        operations: list[Operation] = []
        for line in self._lines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                sha256, _ = store.put_bytes(base64.b64decode(value["content"]))
                operations.append(Operation("add", value["path"], sha256))
            elif key == "lfsFile":
                operations.append(Operation("add", value["path"], value["oid"], lfs=True))
            elif key == "deletedFile":
                operations.append(Operation("delete", value["path"]))
            elif key == "deletedFolder":
                operations.append(Operation("delete_folder", value["path"]))
            else:
                raise StoreError(f"unsupported commit operation {key}")
        commit_id = store.create_commit(
            repo_type,
            repo_id,
            branch,
            operations,
            header.get("summary") or "update",
            header.get("description", ""),
            header.get("parentCommit"),
        )
        self._json(
            {
                "commitUrl": f"{self._repo_url(repo_type, repo_id)}/commit/{commit_id}",
                "commitOid": commit_id,
                "pullRequestUrl": None,
                "success": True,
            }
        )

    def _lines(self):
        """NDJSON lines of the body, read in chunks (a line holds at most one regular, i.e. small, file)."""
        pending = b""
        for chunk in self._body_chunks():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            yield from (line for line in lines if line.strip())
        if pending.strip():
            yield pending

    def _resolve(self, repo_type: str, repo_id: str, revision: str, filename: str) -> None:
        commit = self.store.commit_at(repo_type, repo_id, revision)
        entry = commit.tree.get(filename)
        if entry is None:
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit.id}
            return self._send(404, b"", headers)
        headers = {
            "X-Repo-Commit": commit.id,
            "ETag": f'"{entry.sha256 if entry.lfs else entry.oid}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": entry.size})
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and int(match.group(1)) < entry.size:
            start = int(match.group(1))
            headers["Content-Range"] = f"bytes {start}-{entry.size - 1}/{entry.size}"
        self.send_response(206 if start else 200)
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(entry.size - start))
        self.end_headers()
        if self.command == "GET":
            for chunk in self.store.iter_blob(entry.sha256, start):
                self.wfile.write(chunk)


def serve(root: str | Path, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> tuple[HubServer, str]:
    """Start a server over `root` in a daemon thread; returns it and its URL (call `server.shutdown()` to stop)."""
    server = HubServer((host, port), Store(root), token)
    threading.Thread(target=server.serve_forever, daemon=True, name="rlrf-hub-server").start()
    return server, f"http://{host}:{server.server_address[1]}"


def run_forever(root: str | Path, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
    """Serve until interrupted, announcing the URL in `<root>/server.json` so runs over the same store reuse it."""
    server = HubServer((host, port), Store(root), token)
    url = f"http://{host}:{server.server_address[1]}"
    announcement = Path(root) / SERVER_FILE
    _write_json(announcement, {"url": url, "pid": os.getpid()})
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
    """The URL of a live `rlrf-hub hub serve` over `root`, if `<root>/server.json` names one that answers for it."""
    try:
        url = json.loads((Path(root) / SERVER_FILE).read_text())["url"]
        with urlopen(f"{url}{STORE_INFO}", timeout=2) as response:
            served = json.load(response)["root"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if Path(served) == Path(root).resolve() else None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlrf-hub hub serve", description=__doc__)
    parser.add_argument("--root", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=None)
    args = parser.parse_args(argv)
    run_forever(args.root, args.host, args.port, args.token)
    return 0


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
