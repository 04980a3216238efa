"""TGI's HTTP routes over `http.server`: JSON bodies, Server-Sent Events over chunked HTTP/1.1, TGI error bodies.

Errors found before the first token (validation, a full queue) are answered with their HTTP status even on streaming
routes; an error after the stream started is sent as a final `data:{"error": ..., "error_type": ...}` event, which
is how TGI reports it. A client that goes away mid-stream cancels its rows.

The socket side is `rlrf_hub.httpd`: a listen backlog of 128, a bounded pool of handler threads (enough for every
request the scheduler may hold) and an idle timeout per connection. A request that cannot be read is answered, never
dropped or waited on forever, as TGI's HTTP layer answers it: 400 for broken framing (`Content-Length`, chunk sizes)
or a body that is not JSON (not UTF-8, bad syntax, nested deeper than 64), 413 for a body over the payload limit,
408 for a body that stalls; JSON that is valid but not a valid request stays TGI's 422. These answers carry TGI's
error body with the `validation` type, and close the connection in a way that lets the client read them.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from ..httpd import (
    IDLE_TIMEOUT_S,
    MAX_WORKERS,
    READ_CHUNK,
    BadRequest,
    BoundedHTTPServer,
    content_length,
    discard_body,
    is_chunked,
    parse_json,
    read_body,
)
from .errors import IncompleteGenerationError, RequestRefused, ServingError
from .protocol import (
    SequenceResult,
    chat_chunk,
    chat_chunk_choice,
    chat_completion,
    generate_response,
    stream_final_event,
    stream_token_event,
    usage,
)
from .scheduler import ErrorEvent, TokenEvent
from .service import PreparedJob, TextGenerationService

logger = logging.getLogger(__name__)

SPARE_WORKERS = 8
DRAIN_BYTES = 256 * 1024 * 1024
DRAIN_S = 10.0
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class ServeHTTPServer(BoundedHTTPServer):
    """The service behind a `BoundedHTTPServer` with a handler thread for every request the scheduler may hold
    (running and queued) and a few spare for `/health` and `/metrics`; further clients wait in the listen backlog."""

    def __init__(self, address: tuple[str, int], service: TextGenerationService):
        config = service.config
        workers = max(MAX_WORKERS, config.max_batch_size + config.max_queue + SPARE_WORKERS)
        super().__init__(address, ServeHandler, max_workers=workers)
        self.service = service
        self.payload_limit = config.payload_limit

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], _DISCONNECTS):
            logger.debug("client %s went away", client_address[0])
        else:
            logger.exception("connection from %s failed", client_address[0])


class ClientGone(Exception):
    """The client closed the connection while we were streaming to it."""


class ServeHandler(BaseHTTPRequestHandler):
    server: ServeHTTPServer
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        logger.debug("%s " + format, self.address_string(), *args)

    @property
    def service(self) -> TextGenerationService:
        return self.server.service

    # Plumbing ---------------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200, close: bool = False) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", close)

    def _error(self, error: ServingError) -> None:
        self._json(error.body(), error.status)

    def _read_json(self) -> Any:
        """The request body as JSON; `RequestRefused` when it cannot be (400, 413, 408), `ConnectionError` when the
        client left mid-body."""
        if is_chunked(self.headers) and "Content-Length" in self.headers:
            self.close_connection = True  # framing that disagrees must not decide where the next request starts
        try:
            return parse_json(read_body(self.rfile, self.headers, self.server.payload_limit))
        except BadRequest as err:
            raise RequestRefused(err.status, err.message) from None
        except TimeoutError:
            raise RequestRefused(408, f"request body timed out: nothing arrived for {self.timeout:g} s") from None

    def _refuse(self, error: RequestRefused) -> None:
        """Answer with `error` and close the connection so that the client gets to read the answer.

        Closing a socket with input still unread resets the connection, and a reset can discard the answer before
        the client reads it (typically a client still sending a body over the limit). So the write side is shut
        first, then what the client still sends is read and dropped, up to `DRAIN_BYTES` or `DRAIN_S` seconds.
        """
        self.close_connection = True
        try:
            self._json(error.body(), error.status, close=True)
            self.connection.shutdown(socket.SHUT_WR)
            self._drain()
        except OSError:
            pass

    def _drain(self) -> None:
        deadline = time.monotonic() + DRAIN_S
        left = DRAIN_BYTES
        while left > 0 and time.monotonic() < deadline:
            self.connection.settimeout(max(deadline - time.monotonic(), 0.01))
            data = self.rfile.read1(min(left, READ_CHUNK))
            if not data:
                return
            left -= len(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """`http.server`'s own refusals (a bad request line, headers too long, an unknown method) in TGI's shape."""
        if self.request_version == "HTTP/0.9":  # not spoken here: answer with a status line all the same
            self.request_version = self.protocol_version
        self._refuse(RequestRefused(code, message or explain or HTTPStatus(code).phrase))

    def handle_expect_100(self) -> bool:
        """Refuse a body over the limit (or a malformed length) before the client sends it."""
        try:
            content_length(self.headers, self.server.payload_limit)
        except BadRequest as err:
            self._refuse(RequestRefused(err.status, err.message))
            return False
        return super().handle_expect_100()

    def _start_stream(self) -> None:
        self._streaming = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        except _DISCONNECTS as err:
            raise ClientGone() from err

    def _event(self, payload: Any, separator: str = "") -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self._chunk(f"data:{separator}{text}\n\n".encode())

    def _end_stream(self) -> None:
        self._chunk(b"")

    # Routes -----------------------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        discard_body(self, self.server.payload_limit)
        path = urlsplit(self.path).path.rstrip("/") or "/"
        if path == "/health":
            if self.service.scheduler.alive:
                self._send(200, b"", "application/json")
            else:
                self._json({"error": "unhealthy", "error_type": "healthcheck"}, 503)
        elif path == "/info":
            self._json(self.service.info())
        elif path == "/metrics":
            self._send(200, self.service.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/v1/models":
            self._json(self.service.models())
        else:
            self._json({"error": f"no route GET {path}", "error_type": "not_found"}, 404)

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path.rstrip("/") or "/"
        routes = {
            "/generate": lambda body: self._generate(body, stream=False),
            "/generate_stream": lambda body: self._generate(body, stream=True),
            "/": lambda body: self._generate(body, stream=None),
            "/v1/chat/completions": self._chat,
        }
        route = routes.get(path)
        if route is None:
            discard_body(self, self.server.payload_limit)
            self._json({"error": f"no route POST {path}", "error_type": "not_found"}, 404)
            return
        try:
            body = self._read_json()
        except RequestRefused as err:
            self._refuse(err)
            return
        except OSError:  # the client left mid-body: nobody to answer
            self.close_connection = True
            return
        self._streaming = False
        try:
            route(body)
        except ServingError as err:
            self._error(err)
        except (ClientGone, *_DISCONNECTS):
            self.close_connection = True
        except Exception as err:  # a bug, not the request's fault: answer it (if still possible) and keep serving
            logger.exception("request to %s failed", path)
            self.close_connection = True
            error = IncompleteGenerationError(f"Request failed: {type(err).__name__}: {err}")
            self.service.record_failure(error)
            if not self._streaming:
                self._error(error)

    # Generation -------------------------------------------------------------------------------------------------
    def _wait_first(self, prepared: PreparedJob) -> TokenEvent:
        event = prepared.job.events.get()
        if isinstance(event, ErrorEvent):
            self.service.record_failure(event.error)
            raise event.error
        return event

    def _collect(self, prepared: PreparedJob) -> list[SequenceResult]:
        job = prepared.job
        results: list[SequenceResult | None] = [None] * job.rows
        event = self._wait_first(prepared)
        while True:
            if event.result is not None:
                results[event.index] = event.result
                if all(result is not None for result in results):
                    break
            event = job.events.get()
            if isinstance(event, ErrorEvent):
                self.service.record_failure(event.error)
                raise event.error
        self.service.record_success()
        return results  # type: ignore[return-value]

    def _stream(self, prepared: PreparedJob, write_token, finish=None, separator: str = "") -> None:
        """Write one SSE event per token until every row finished; errors after the start become an event."""
        job = prepared.job
        event: TokenEvent | ErrorEvent = self._wait_first(prepared)
        self._start_stream()
        finished = 0
        try:
            while True:
                if isinstance(event, ErrorEvent):
                    self.service.record_failure(event.error)
                    self._event(event.error.body(), separator=separator)
                    break
                write_token(event)
                if event.result is not None:
                    finished += 1
                    if finished == job.rows:
                        self.service.record_success()
                        if finish is not None:
                            finish()
                        break
                event = job.events.get()
            self._end_stream()
        except ClientGone:
            job.cancelled = True
            raise

    def _generate(self, body: Any, stream: bool | None) -> None:
        prepared = self.service.submit_generate(body, stream)
        request = prepared.request
        prefix = request.inputs if request.return_full_text else ""
        if not request.stream:
            response = generate_response(request, self._collect(prepared), prefix)
            self._json([response] if stream is None else response)
            return

        index = [0]

        def write_token(event: TokenEvent) -> None:
            index[0] += 1  # TGI numbers the events of a stream from 1
            if event.result is None:
                self._event(stream_token_event(index[0], event.token))
            else:
                self._event(stream_final_event(index[0], event.token, event.result, prefix))

        self._stream(prepared, write_token)

    def _chat(self, body: Any) -> None:
        prepared = self.service.submit_chat(body)
        request = prepared.request
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if not request.stream:
            results = self._collect(prepared)
            self._json(chat_completion(request, results, completion_id, created, prepared.model_name))
            return
        completion_tokens = [0]

        def write_token(event: TokenEvent) -> None:
            completion_tokens[0] += 1
            content = "" if event.token.special else event.token.text
            reason = event.result.finish_reason if event.result is not None else None
            choice = chat_chunk_choice(event.index, content, event.token, reason, request.logprobs)
            self._event(chat_chunk(completion_id, created, prepared.model_name, [choice]), separator=" ")

        def finish() -> None:
            if request.include_usage:
                totals = usage(prepared.input_length, completion_tokens[0])
                self._event(chat_chunk(completion_id, created, prepared.model_name, [], totals), separator=" ")
            self._event("[DONE]", separator=" ")

        self._stream(prepared, write_token, finish, separator=" ")
