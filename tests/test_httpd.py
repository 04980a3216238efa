"""The HTTP foundation of both servers: strict bodies, the size cap, JSON depth, and a burst of clients."""

from __future__ import annotations

import io
import socket
import threading
import time
from email.message import Message
from http.server import BaseHTTPRequestHandler

import pytest

from rlrf_hub.httpd import LISTEN_BACKLOG, BadRequest, BoundedHTTPServer, parse_json, read_body


def _headers(**values: str) -> Message:
    message = Message()
    for key, value in values.items():
        message[key.replace("_", "-")] = value
    return message


@pytest.mark.parametrize("value", ["abc", "-1", "+5", "1.5", " ", "٣"])
def test_bad_content_length_is_400(value):
    with pytest.raises(BadRequest) as info:
        read_body(io.BytesIO(b"xxxxx"), _headers(Content_Length=value), limit=100)
    assert info.value.status == 400 and "Content-Length" in info.value.message


def test_body_over_the_limit_is_413_before_reading():
    stream = io.BytesIO(b"x" * 1000)
    with pytest.raises(BadRequest) as info:
        read_body(stream, _headers(Content_Length="1000"), limit=999)
    assert info.value.status == 413 and stream.tell() == 0


def test_chunked_body_is_read_and_capped():
    body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
    assert read_body(io.BytesIO(body), _headers(Transfer_Encoding="chunked"), limit=100) == b"hello world"
    with pytest.raises(BadRequest) as info:
        read_body(io.BytesIO(body), _headers(Transfer_Encoding="chunked"), limit=8)
    assert info.value.status == 413


@pytest.mark.parametrize("body", [b"zz\r\nhello\r\n0\r\n\r\n", b"-5\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n"])
def test_malformed_chunks_are_400(body):
    with pytest.raises(BadRequest) as info:
        read_body(io.BytesIO(body), _headers(Transfer_Encoding="chunked"), limit=100)
    assert info.value.status == 400


def test_truncated_body_is_a_connection_error():
    with pytest.raises(ConnectionError):
        read_body(io.BytesIO(b"abc"), _headers(Content_Length="10"), limit=100)


def test_json_depth_not_utf8_and_syntax_are_400():
    assert parse_json(b'{"text": "' + b"[" * 500 + b'"}') == {"text": "[" * 500}
    for raw, word in ((b"[" * 100_000, "nests"), (b"\xff\xfe", "UTF-8"), (b"{nope", "JSON")):
        with pytest.raises(BadRequest) as info:
            parse_json(raw)
        assert info.value.status == 400 and word in info.value.message


class _SlowHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        time.sleep(0.05)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


def test_burst_beyond_the_worker_count_is_queued_not_reset():
    """100 clients connect before the server accepts anything, then are served by 4 workers: each connection is
    taken into the backlog at once (with `http.server`'s backlog of 5 the rest time out or are reset) and every
    one is answered."""
    server = BoundedHTTPServer(("127.0.0.1", 0), _SlowHandler, max_workers=4)
    port = server.server_address[1]
    clients = [socket.create_connection(("127.0.0.1", port), timeout=0.5) for _ in range(LISTEN_BACKLOG - 28)]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    answers: list[bytes] = []
    try:
        for sock in clients:
            sock.settimeout(60)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = [sock.makefile("rb").read() for sock in clients]
    finally:
        for sock in clients:
            sock.close()
        server.shutdown()
        server.server_close()
    assert len(answers) == len(clients)
    assert all(answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok") for answer in answers)
