"""Starting `rlrf-hub serve` from Python: in this process (a thread) or as a subprocess.

    with start_server("embedded:tiny") as server:
        InferenceClient(server.url).text_generation("Hi", max_new_tokens=8)

`adapters` are loaded at start and are the only local folders the server loads adapters from; requests may add
Hub adapters. Extra keyword `options` are `ServeConfig` fields: `max_input_tokens`, `max_total_tokens`, `max_queue`,
`batch_window_ms`, `threads` (torch threads of the generation thread), `device`, `payload_limit` (bytes).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from .service import ServeConfig

_URL = re.compile(r"(http://\S+)")
_OPTIONS = {field.name for field in fields(ServeConfig)} - {"model", "revision", "adapters", "max_batch_size"}


class ServerHandle:
    """A running server: `.url`, `.close()`; closes on leaving a `with` block."""

    def __init__(self, url: str, closer, service=None, process: subprocess.Popen | None = None):
        self.url = url
        self.service = service
        self.process = process
        self._closer = closer
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._closer()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServerHandle({self.url!r})"


def _config(
    model: str, revision: str | None, adapters: Sequence[str], max_batch_size: int, options: dict[str, Any]
) -> ServeConfig:
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TypeError(f"unknown server option(s) {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    return ServeConfig(
        model=model, revision=revision, adapters=tuple(adapters), max_batch_size=max_batch_size, **options
    )


def start_server(
    model: str,
    revision: str | None = None,
    adapters: Sequence[str] = (),
    host: str = "127.0.0.1",
    port: int = 0,
    max_batch_size: int = 16,
    **options: Any,
) -> ServerHandle:
    """Load the model and serve it from a thread of this process; returns once it accepts requests."""
    from .server import ServeHTTPServer
    from .service import TextGenerationService

    service = TextGenerationService(_config(model, revision, adapters, max_batch_size, options))
    try:
        httpd = ServeHTTPServer((host, port), service)
    except OSError:
        service.close()
        raise
    thread = threading.Thread(target=httpd.serve_forever, name="rlrf-hub-serve-http", daemon=True)
    thread.start()

    def close() -> None:
        httpd.shutdown()
        httpd.server_close()
        service.close()
        thread.join(5)

    return ServerHandle(httpd.url, close, service=service)


def cli_arguments(
    model: str,
    revision: str | None = None,
    adapters: Sequence[str] = (),
    host: str = "127.0.0.1",
    port: int = 0,
    max_batch_size: int = 16,
    **options: Any,
) -> list[str]:
    """The `rlrf-hub serve` arguments for these settings."""
    _config(model, revision, adapters, max_batch_size, options)
    argv = ["--model", model, "--host", host, "--port", str(port), "--max-batch-size", str(max_batch_size)]
    if revision:
        argv += ["--revision", revision]
    for adapter in adapters:
        argv += ["--adapter", adapter]
    for key, value in options.items():
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def spawn_server(
    model: str,
    revision: str | None = None,
    adapters: Sequence[str] = (),
    host: str = "127.0.0.1",
    port: int = 0,
    max_batch_size: int = 16,
    *,
    timeout: float = 300.0,
    env: Mapping[str, str] | None = None,
    log_file: str | Path | None = None,
    **options: Any,
) -> ServerHandle:
    """Run `python -m rlrf_hub.serving ...` in a subprocess; returns once its `/health` answers.

    `env` is added to this process's environment (e.g. `HF_ENDPOINT` for adapters on an offline Hub); the server's
    stderr goes to `log_file` when given, else to this process's stderr.
    """
    argv = cli_arguments(model, revision, adapters, host, port, max_batch_size, **options)
    environment = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    stderr = open(log_file, "ab") if log_file else None  # noqa: SIM115  # owned by the handle
    process = subprocess.Popen(
        [sys.executable, "-m", "rlrf_hub.serving", *argv],
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=environment,
        text=True,
    )

    def close() -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout:
            process.stdout.close()
        if stderr:
            stderr.close()

    found: list[str] = []

    def read_stdout() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            match = _URL.search(line)
            if match and not found:
                found.append(match.group(1).rstrip("/"))

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            close()
            raise RuntimeError(f"rlrf-hub serve exited with status {process.returncode} before it was ready")
        if found and _healthy(found[0]):
            return ServerHandle(found[0], close, process=process)
        time.sleep(0.1)
    close()
    raise TimeoutError(f"rlrf-hub serve was not ready within {timeout:.0f} s")
