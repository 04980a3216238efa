"""`rlrf-hub serve` under load and under hostile input, over real HTTP on 127.0.0.1 with the tiny model: a burst of
50 clients is answered in full, every malformed request gets a 4xx with a TGI error body (never a hang or a silent
close), a body over the limit gets a 413 the client actually reads, and adapters load only from the folders named
at start or from the Hub, never from a path a request names."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from test_serving_adapters import make_adapter

from rlrf_hub.httpd import IDLE_TIMEOUT_S
from rlrf_hub.serving.adapters import hub_adapter_spec
from rlrf_hub.serving.launch import start_server
from rlrf_hub.serving.server import ServeHandler

CLIENTS = 50
MESSAGES = [{"role": "user", "content": "Say hi."}]
MB = 1024 * 1024


@pytest.fixture(scope="module")
def named_adapter(tiny_model, tmp_path_factory) -> Path:
    return make_adapter(tiny_model, tmp_path_factory.mktemp("named") / "lora", 1)


@pytest.fixture(scope="module")
def server(named_adapter):
    with start_server("embedded:tiny", adapters=[str(named_adapter)], threads=1, max_total_tokens=256) as handle:
        yield handle


def address(server) -> tuple[str, int]:
    parts = urlsplit(server.url)
    return parts.hostname, parts.port


def post_json(server, path: str, body: Any) -> tuple[int, Any]:
    """One request on a fresh connection, as a burst of independent clients sends them."""
    connection = http.client.HTTPConnection(*address(server), timeout=120)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def exchange(server, raw: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], Any]:
    """Send `raw` bytes and read one response; a silent close raises, a hang times out after `timeout` s."""
    with socket.create_connection(address(server), timeout=timeout) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        headers = {key.lower(): value for key, value in response.getheaders()}
        return response.status, headers, json.loads(response.read())


def raw_post(headers: dict[str, str], body: bytes = b"", path: str = "/generate") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def assert_tgi_error(status: int, body: Any, expected: int, needle: str) -> None:
    assert status == expected, body
    assert set(body) == {"error", "error_type"} and body["error_type"] == "validation", body
    assert needle in body["error"], body


# A burst of clients ----------------------------------------------------------------------------------------------
def well_formed(path: str, body: Any) -> bool:
    if path == "/generate":
        return isinstance(body.get("generated_text"), str)
    message = body["choices"][0]["message"]
    return (
        body["object"] == "chat.completion"
        and message["role"] == "assistant"
        and isinstance(message["content"], str)
        and 0 < body["usage"]["completion_tokens"] <= 16
    )


def test_fifty_concurrent_clients_are_all_answered(server):
    """Half /generate, half chat, all connecting at once: with `http.server`'s listen backlog of 5 some of these
    were reset; each must get its 200 and a well-formed body."""
    jobs = [
        ("/generate", {"inputs": f"Request {i}", "parameters": {"max_new_tokens": 16}})
        if i % 2
        else ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 16, "seed": i})
        for i in range(CLIENTS)
    ]
    start = threading.Barrier(CLIENTS)

    def client(job: tuple[str, Any]) -> tuple[int, Any] | Exception:
        start.wait()
        try:
            return post_json(server, *job)
        except Exception as err:  # collected, so that the assertion counts every failure
            return err

    with ThreadPoolExecutor(CLIENTS) as pool:
        outcomes = list(pool.map(client, jobs))
    failed = [outcome for outcome in outcomes if isinstance(outcome, Exception) or outcome[0] != 200]
    assert not failed, f"{len(failed)} of {CLIENTS} failed: {failed[:3]}"
    assert all(well_formed(path, body) for (path, _), (_, body) in zip(jobs, outcomes, strict=True))


# Malformed requests ----------------------------------------------------------------------------------------------
DEEP = b'{"inputs": "x", "parameters": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize(
    ("raw", "status", "needle"),
    [
        (raw_post({"Content-Length": str(len(DEEP))}, DEEP), 400, "nests deeper"),
        (raw_post({"Transfer-Encoding": "chunked"}, b"zz\r\nhello\r\n0\r\n\r\n"), 400, "chunk size"),
        (raw_post({"Content-Length": "abc"}, b"{}"), 400, "Content-Length"),
        (raw_post({"Content-Length": "-1"}, b"{}"), 400, "Content-Length"),
        (raw_post({"Content-Length": "9"}, b"{not json"), 400, "not valid JSON"),
        (raw_post({"Content-Length": "2"}, b"\xff\xfe"), 400, "UTF-8"),
        (raw_post({"Content-Length": str(70 * MB), "Expect": "100-continue"}), 413, "over the limit"),
        (b"NONSENSE\r\n\r\n", 400, "Bad request syntax"),
    ],
    ids=["deep-json", "bad-chunk-size", "length-abc", "length-minus-1", "not-json", "not-utf8", "expect-413", "line"],
)
def test_malformed_requests_get_a_tgi_error_not_a_hang(server, raw, status, needle):
    """Each is answered within a short client timeout (`Content-Length: -1` used to hang the handler, the others
    closed the connection without an answer or answered HTML)."""
    code, headers, body = exchange(server, raw, timeout=5)
    assert_tgi_error(code, body, status, needle)
    assert headers["connection"] == "close"
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_70_mb_body_gets_413_and_the_client_reads_it(server, chunked):
    """A real client still sending its body receives the 413 (the server reads a bounded amount and closes its
    side first), rather than a connection reset."""
    payload = b" " * (70 * MB)
    data = (payload[start : start + MB] for start in range(0, len(payload), MB)) if chunked else payload
    response = requests.post(server.url + "/generate", data=data, timeout=60)
    assert_tgi_error(response.status_code, response.json(), 413, "over the limit")
    assert response.headers["Connection"] == "close"
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def test_a_stalled_body_times_out_with_408(server, monkeypatch):
    """A client that stops sending mid-body is answered and dropped after the idle timeout, not waited on."""
    assert ServeHandler.timeout == IDLE_TIMEOUT_S
    monkeypatch.setattr(ServeHandler, "timeout", 0.5)
    started = time.monotonic()
    code, headers, body = exchange(server, raw_post({"Content-Length": "100"}, b'{"inputs"'), timeout=5)
    assert_tgi_error(code, body, 408, "timed out")
    assert time.monotonic() - started < 4


# Where adapters come from ----------------------------------------------------------------------------------------
def sample(server, **extra) -> tuple[int, Any]:
    return post_json(server, "/generate", {"inputs": "Write one word:", "parameters": {"max_new_tokens": 4, **extra}})


def refusal(server, name: str) -> str:
    """The error for `adapter_id=name` on both routes, with the name itself blanked out; they must agree."""
    messages = set()
    for path, body in [
        ("/generate", {"inputs": "x", "parameters": {"max_new_tokens": 2, "adapter_id": name}}),
        ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 2, "adapter_id": name}),
    ]:
        status, answer = post_json(server, path, body)
        assert_tgi_error(status, answer, 422, "adapter_id")
        messages.add(answer["error"].replace(repr(name), "NAME"))
    assert len(messages) == 1, messages
    return messages.pop()


def test_adapter_paths_not_named_at_start_are_refused_alike(server, named_adapter, tmp_path):
    """A folder holding a valid adapter, a missing path and other folders all get the unknown-adapter answer, so
    a client learns nothing about the server's disk; the folder named at start is served."""
    copy = shutil.copytree(named_adapter, tmp_path / "copy")
    (tmp_path / "empty").mkdir()
    names = [str(copy), str(tmp_path / "missing"), str(tmp_path / "empty"), "/etc", "../lora", "owner/name@../../x"]
    assert len({refusal(server, name) for name in names}) == 1
    assert str(copy) not in requests.get(server.url + "/info", timeout=10).json()["adapters"]
    base = sample(server, seed=3, do_sample=True)
    tuned = sample(server, seed=3, do_sample=True, adapter_id=str(named_adapter))
    assert base[0] == tuned[0] == 200 and base[1] != tuned[1]


def test_chat_model_naming_a_folder_is_the_base_model(server, named_adapter, tmp_path):
    """OpenAI clients put any name in `model`: a folder not named at start means the base model, like any unknown
    name, whether it holds an adapter or not."""
    copy = shutil.copytree(named_adapter, tmp_path / "copy")
    answers = []
    for model in ("tgi", str(copy), str(tmp_path / "missing"), str(named_adapter)):
        body = {"messages": MESSAGES, "max_tokens": 6, "seed": 1, "model": model}
        status, answer = post_json(server, "/v1/chat/completions", body)
        assert status == 200, answer
        answers.append((answer["model"], answer["choices"][0]["message"]["content"]))
    assert answers[0] == answers[1] == answers[2] and answers[0][0] == "embedded:tiny"
    assert answers[3][0] == str(named_adapter)


def test_a_relative_folder_shaped_like_a_repo_id_is_looked_up_on_the_hub_only(
    server, named_adapter, tmp_path, monkeypatch
):
    """`owner/lora` next to the server's working directory is not loaded: the name means a Hub repo (here an
    unreachable Hub), and the answer is the same as for a name with no folder."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.chdir(tmp_path)
    shutil.copytree(named_adapter, tmp_path / "owner" / "lora")
    assert refusal(server, "owner/lora") == refusal(server, "owner/missing")


@pytest.mark.parametrize(
    ("name", "repo", "revision"),
    [
        ("owner/name", "owner/name", None),
        ("owner/name@v1", "owner/name", "v1"),
        ("owner/name@refs/pr/1", "owner/name", "refs/pr/1"),
        ("/abs/folder", None, None),
        ("./folder", None, None),
        ("../folder", None, None),
        ("a/b/c", None, None),
        ("owner/..", None, None),
        ("owner/name@../../etc", None, None),
        ("owner/name@", None, None),
        ("folder", None, None),
    ],
)
def test_only_hub_repo_ids_are_resolvable_by_request(name, repo, revision):
    spec = hub_adapter_spec(name)
    if repo is None:
        assert spec is None
    else:
        assert (spec.location, spec.revision) == (repo, revision)
