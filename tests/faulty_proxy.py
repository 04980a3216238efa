"""A real HTTP proxy in front of a real server that injects faults on a schedule, for fault-injection tests.

`FaultyProxy(upstream, schedule)` listens on 127.0.0.1 (a free port, one thread per connection) and forwards
every request to `upstream`. The n-th POST (the generation requests; GETs such as `/info` always pass) gets the
fault `schedule[n]`, and `default` once the schedule is used up:

- `pass`: forwarded untouched.
- `timeout`: held for `hold_s` seconds (longer than the client's timeout), then closed unanswered.
- `500`, `503`: a TGI-shaped error body with that status.
- `429`: rate limited, with `Retry-After: <retry_after>`.
- `422`: a validation error (a 4xx the client must not retry).
- `close`: forwarded, then the reply is cut after half its body and the connection closed.
- `reset`: the connection is closed before any reply.
- `garble`: forwarded, and the generated text in the reply replaced by text that is not the JSON asked for.

`die_after=N` takes the proxy down for good after N POSTs: its socket closes and connections are refused.
`injected` counts the faults dealt, `posts` the POSTs seen.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("pass", "timeout", "500", "503", "429", "422", "close", "reset", "garble")
GARBLED_TEXT = "The answer is good. {rating: maybe"


class FaultyProxy:
    def __init__(
        self,
        upstream: str,
        schedule: Sequence[str] = (),
        default: str = "pass",
        die_after: int | None = None,
        hold_s: float = 5.0,
        retry_after: str = "0.1",
    ):
        for fault in [*schedule, default]:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; known: {FAULTS}")
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port or 80
        self.schedule = list(schedule)
        self.default = default
        self.die_after = die_after
        self.hold_s = hold_s
        self.retry_after = retry_after
        self.injected: Counter = Counter()
        self.posts = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def next_fault(self) -> str:
        with self._lock:
            index = self.posts
            self.posts += 1
            fault = self.schedule[index] if index < len(self.schedule) else self.default
            self.injected[fault] += 1
            if self.die_after is not None and self.posts >= self.die_after:
                threading.Thread(target=self.close, daemon=True).start()
            return fault

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        connection = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=300)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultyProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def garble(body: bytes) -> bytes:
    """The same reply with its generated text replaced (chat completions and TGI `/generate` shapes)."""
    data = json.loads(body)
    if isinstance(data, dict) and "choices" in data:
        data["choices"][0]["message"]["content"] = GARBLED_TEXT
    elif isinstance(data, list):
        data[0]["generated_text"] = GARBLED_TEXT
    else:
        data["generated_text"] = GARBLED_TEXT
    return json.dumps(data).encode()


def _handler_for(proxy: FaultyProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
            pass

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _headers(self) -> dict[str, str]:
            skip = {"host", "connection", "content-length", "accept-encoding"}
            return {k: v for k, v in self.headers.items() if k.lower() not in skip}

        def _reply(self, status: int, headers: list, body: bytes, cut: bool = False) -> None:
            try:
                self._write(status, headers, body, cut)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up first (its timeout)
                self.close_connection = True

        def _write(self, status: int, headers: list, body: bytes, cut: bool) -> None:
            self.send_response(status)
            skip = {"content-length", "transfer-encoding", "connection", "content-encoding", "date", "server"}
            for key, value in headers:
                if key.lower() not in skip:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            if cut:
                self.send_header("Connection", "close")
            self.end_headers()
            if cut:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self._drop()
                return
            self.wfile.write(body)

        def _drop(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _error(self, status: int, message: str, error_type: str, extra: list | None = None) -> None:
            body = json.dumps({"error": message, "error_type": error_type}).encode()
            self._reply(status, [("Content-Type", "application/json"), *(extra or [])], body)

        def do_GET(self) -> None:
            if proxy.closed:
                return self._drop()
            status, headers, body = proxy.forward("GET", self.path, self._headers(), b"")
            self._reply(status, headers, body)

        def do_POST(self) -> None:
            body = self._body()
            if proxy.closed:
                return self._drop()
            fault = proxy.next_fault()
            if fault == "timeout":
                time.sleep(proxy.hold_s)
                self._drop()
            elif fault == "reset":
                self._drop()
            elif fault in ("500", "503"):
                self._error(int(fault), "injected server failure", "generation" if fault == "500" else "overloaded")
            elif fault == "429":
                self._error(429, "Model is overloaded", "overloaded", [("Retry-After", proxy.retry_after)])
            elif fault == "422":
                self._error(422, "Input validation error: injected", "validation")
            else:
                status, headers, reply = proxy.forward("POST", self.path, self._headers(), body)
                if fault == "garble" and status == 200:
                    reply = garble(reply)
                self._reply(status, headers, reply, cut=fault == "close")

    return Handler
