"""The HTTP server under both `rlrf-hub hub serve` and `rlrf-hub serve`: a deep listen backlog, a bounded number of
worker threads, an idle timeout per connection, and strict request bodies.

`http.server` on its own listens with a backlog of 5 (so a burst of clients gets connection resets), starts one
thread per connection without limit, waits forever on an idle client, and trusts `Content-Length`. The pieces
here fix that once for both servers: `BoundedHTTPServer` for the socket and the threads, `read_body_chunks` for
the body, which raises `BadRequest` (400 or 413) for anything malformed or too large instead of hanging or
closing the connection without an answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO

LISTEN_BACKLOG = 128
MAX_WORKERS = 128
IDLE_TIMEOUT_S = 60.0
READ_CHUNK = 1024 * 1024
MAX_JSON_DEPTH = 64


class BadRequest(Exception):
    """A request the server refuses as sent: `status` is 400 (malformed) or 413 (too large)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class BoundedHTTPServer(ThreadingHTTPServer):
    """A threading server with `LISTEN_BACKLOG` pending connections and at most `max_workers` handler threads.

    When every worker is busy the accept loop waits for one to finish, so further clients queue in the kernel's
    backlog instead of each getting a thread (or a reset).
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_workers: int = MAX_WORKERS
    ):
        self._slots = threading.BoundedSemaphore(max_workers)
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def content_length(headers: Message, limit: int) -> int:
    """The declared body size; 400 when it is not a plain non-negative integer, 413 when it is over `limit`."""
    raw = headers.get("Content-Length")
    if raw is None:
        return 0
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit():
        raise BadRequest(400, f"Content-Length must be a non-negative integer, got {raw[:40]!r}")
    length = int(raw)
    if length > limit:
        raise BadRequest(413, f"request body of {length} bytes is over the limit of {limit} bytes")
    return length


def is_chunked(headers: Message) -> bool:
    return "chunked" in (headers.get("Transfer-Encoding") or "").lower()


def read_body_chunks(rfile: BinaryIO, headers: Message, limit: int) -> Iterator[bytes]:
    """The request body as chunks, for `Content-Length` and `Transfer-Encoding: chunked` alike.

    Raises `BadRequest` for a malformed size or a body over `limit`, and `ConnectionError` when the client closes
    the connection before the body ends.
    """
    if is_chunked(headers):
        yield from _chunked(rfile, limit)
    else:
        yield from _exactly(rfile, content_length(headers, limit))


def _chunked(rfile: BinaryIO, limit: int) -> Iterator[bytes]:
    total = 0
    while True:
        line = rfile.readline(1026)
        if not line:
            raise ConnectionError("client closed the connection mid-body")
        size_text = line.split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadRequest(400, f"malformed chunk size {size_text[:20]!r}") from None
        if size < 0 or size_text.startswith((b"-", b"+")):
            raise BadRequest(400, f"malformed chunk size {size_text[:20]!r}")
        if size == 0:
            while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass
            return
        total += size
        if total > limit:
            raise BadRequest(413, f"request body is over the limit of {limit} bytes")
        yield from _exactly(rfile, size)
        if rfile.readline(3) not in (b"\r\n", b"\n"):
            raise BadRequest(400, "chunk data is not followed by CRLF")


def _exactly(rfile: BinaryIO, size: int) -> Iterator[bytes]:
    remaining = size
    while remaining:
        chunk = rfile.read(min(remaining, READ_CHUNK))
        if not chunk:
            raise ConnectionError("client closed the connection mid-body")
        remaining -= len(chunk)
        yield chunk


def read_body(rfile: BinaryIO, headers: Message, limit: int) -> bytes:
    return b"".join(read_body_chunks(rfile, headers, limit))


def parse_json(raw: bytes, what: str = "request body") -> Any:
    """JSON from bytes, or `BadRequest(400)` naming what is wrong: not UTF-8, not JSON, or nested too deeply."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRequest(400, f"{what} is not UTF-8: {err}") from None
    brackets = text.count("[") + text.count("{")
    if brackets > MAX_JSON_DEPTH and _nesting(text) > MAX_JSON_DEPTH:
        raise BadRequest(400, f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError as err:
        raise BadRequest(400, f"{what} is not valid JSON: {err}") from None


def _nesting(text: str) -> int:
    """The deepest bracket nesting outside JSON strings, found without recursion (so a hostile body cannot make
    the parser overflow the stack)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def discard_body(handler: BaseHTTPRequestHandler, limit: int) -> None:
    """Read and drop a refused request's body (up to `limit` bytes) so the client sees our answer rather than a
    reset; anything larger or malformed closes the connection after the answer instead."""
    try:
        for _ in read_body_chunks(handler.rfile, handler.headers, limit):
            pass
    except (BadRequest, ConnectionError, OSError):
        handler.close_connection = True
