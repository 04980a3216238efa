"""TGI's HTTP routes over `http.server`: JSON bodies, Server-Sent Events over chunked HTTP/1.1, TGI error bodies.

Errors found before the first token (validation, a full queue) are answered with their HTTP status even on streaming
routes; an error after the stream started is sent as a final `data:{"error": ..., "error_type": ...}` event, which
is how TGI reports it. A client that goes away mid-stream cancels its rows.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .errors import IncompleteGenerationError, ServingError, ValidationError
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

MAX_BODY_BYTES = 64 * 1024 * 1024
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class ServeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: TextGenerationService):
        super().__init__(address, ServeHandler)
        self.service = service

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class ClientGone(Exception):
    """The client closed the connection while we were streaming to it."""


class ServeHandler(BaseHTTPRequestHandler):
    server: ServeHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        logger.debug("%s " + format, self.address_string(), *args)

    @property
    def service(self) -> TextGenerationService:
        return self.server.service

    # Plumbing ---------------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, error: ServingError) -> None:
        self._json(error.body(), error.status)

    def _read_body(self) -> Any:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                raw += self.rfile.read(size)
                self.rfile.readline()
                if len(raw) > MAX_BODY_BYTES:
                    raise ValidationError("request body is too large")
        else:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                raise ValidationError("request body is too large")
            raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValidationError(f"request body is not valid JSON: {err}") from None

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
        try:
            body = self._read_body()
        except ValidationError as err:
            self.close_connection = True
            self._error(err)
            return
        if route is None:
            self._json({"error": f"no route POST {path}", "error_type": "not_found"}, 404)
            return
        self._streaming = False
        try:
            route(body)
        except ServingError as err:
            self._error(err)
        except ClientGone:
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
