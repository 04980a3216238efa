"""Every expected failure of `rlrf-hub run` is one line, `rlrf-hub run: error: <field or file>: <what> (<what to
do>)`, exit status 2, found before any stage writes anything; and Hub calls ride out transient 5xx."""

from __future__ import annotations

import http.client
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import hf_clients, tiny_recipe, write_recipe
from huggingface_hub import HfApi

from rlrf_hub.cli import main
from rlrf_hub.hub import serve

PREFIX = "rlrf-hub run: error: "


def _gsm8k(data_dir: Path, **extra) -> dict:
    source = {"path": str(data_dir / "gsm8k/train.jsonl"), "task": "math", "prompt_field": "question"}
    return {**source, "reference_field": "answer", "limit": 2, **extra}


def _fails(tmp_path: Path, capsys, values: dict, *args: str) -> str:
    """Run the recipe through the CLI; it must fail with one clean line and leave no output behind."""
    recipe = write_recipe(tmp_path / "recipe.yaml", **values)
    assert main(["run", "--config", str(recipe), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(PREFIX) and err.count("\n") == 1 and "Traceback" not in err, err
    output_dir = Path(values["output_dir"])
    assert not (output_dir / "iter-0").exists() and not (output_dir / "prompts").exists(), "no stage has started"
    return err[len(PREFIX) :].strip()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_a_prompt_file_with_a_byte_that_is_not_utf8(tmp_path, data_dir, capsys):
    prompts = tmp_path / "p.jsonl"
    data = b'{"prompt": "Say hi."}\n{"prompt": "Caf\xe9?"}\n'
    prompts.write_bytes(data)
    values = tiny_recipe(data_dir, tmp_path / "out", prompt_sources=[{"path": str(prompts), "task": "general"}])
    message = _fails(tmp_path, capsys, values)
    offset = data.index(b"\xe9")
    assert message.startswith(f"prompt_sources[0].path: {prompts} line 2 (byte {offset}) is not UTF-8")
    assert message.endswith("(save the file as UTF-8)")
    assert not (tmp_path / "out").exists()


def test_a_recipe_with_a_byte_that_is_not_utf8(tmp_path, data_dir, capsys):
    recipe = write_recipe(tmp_path / "recipe.yaml", **tiny_recipe(data_dir, tmp_path / "out"))
    recipe.write_bytes(recipe.read_bytes() + b"# \xff\n")
    lines = recipe.read_bytes().count(b"\n")
    assert main(["run", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{PREFIX}config: {recipe} line {lines} (byte ") and "is not UTF-8" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_malformed_jsonl_row_is_named_by_its_line_in_the_file(tmp_path, data_dir, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "one"}\n\n{"prompt": "two"}\n{"prompt": "three",}\n')
    values = tiny_recipe(data_dir, tmp_path / "out", prompt_sources=[{"path": str(prompts), "task": "general"}])
    message = _fails(tmp_path, capsys, values)
    assert message.startswith(f"prompt_sources[0].path: {prompts} line 4 is not valid JSON")


def test_a_math_row_without_reference_is_an_error_unless_such_rows_are_left_out(tmp_path, data_dir, capsys):
    prompts = tmp_path / "math.jsonl"
    prompts.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?"}\n')
    source = _gsm8k(data_dir, path=str(prompts), limit=None)
    message = _fails(tmp_path, capsys, tiny_recipe(data_dir, tmp_path / "out", prompt_sources=[source]))
    assert message.startswith(f"prompt_sources[0]: {prompts} line 2 has no reference in field 'answer'")
    assert "require_reference: true" in message

    from rlrf_hub.config import PromptSource
    from rlrf_hub.stages.prompts import build_prompts

    kept = build_prompts([PromptSource(**source, require_reference=True)])
    assert [row["prompt"] for row in kept] == ["1+1?"]


def test_a_math_source_without_reference_field(tmp_path, data_dir, capsys):
    source = _gsm8k(data_dir, reference_field=None)
    message = _fails(tmp_path, capsys, tiny_recipe(data_dir, tmp_path / "out", prompt_sources=[source]))
    assert message.startswith("prompt_sources[0].reference_field: math prompts are checked against a reference")


def test_an_output_dir_that_is_a_file(tmp_path, data_dir, capsys):
    (tmp_path / "out").write_text("not a folder")
    message = _fails(tmp_path, capsys, tiny_recipe(data_dir, tmp_path / "out"))
    assert message == f"output_dir: {tmp_path / 'out'} is a file, not a folder (choose another one)"


def test_an_output_dir_that_cannot_be_written(tmp_path, data_dir, capsys):
    message = _fails(tmp_path, capsys, tiny_recipe(data_dir, "/proc/rlrf-hub-run"))
    assert message.startswith("output_dir: cannot create /proc/rlrf-hub-run: ")
    assert message.endswith("(choose a folder you can write to)")


def test_a_policy_that_does_not_exist(tmp_path, data_dir, capsys):
    missing = tmp_path / "models" / "policy"
    message = _fails(tmp_path, capsys, tiny_recipe(data_dir, tmp_path / "out", model_name_or_path=str(missing)))
    assert message.startswith(f"model_name_or_path: {missing} does not exist (")
    assert not (tmp_path / "out").exists(), "the folder the run created is removed again"


@pytest.mark.parametrize(
    ("field", "extra"),
    [("reward_model", {}), ("eval_judge", {"eval_tasks": ["just_eval"]}), ("feedback_model", {})],
)
def test_every_model_the_recipe_names_is_checked_first(tmp_path, data_dir, capsys, tiny_model, field, extra):
    missing = str(tmp_path / "models" / field)
    message = _fails(tmp_path, capsys, tiny_recipe(data_dir, tmp_path / "out", **{field: missing}, **extra))
    assert message.startswith(f"{field}: {missing} does not exist (")


def test_a_truncated_judge_is_found_before_the_candidates(tmp_path, data_dir, capsys, tiny_model):
    judge = tmp_path / "judge"
    shutil.copytree(tiny_model, judge)
    weights = judge / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size - 1000)
    message = _fails(tmp_path, capsys, tiny_recipe(data_dir, tmp_path / "out", feedback_model=str(judge)))
    assert message.startswith(f"feedback_model: {weights} is damaged or truncated: it has {size - 1000} bytes")


def test_a_judge_endpoint_that_refuses_connections(tmp_path, data_dir, capsys, tiny_model):
    url = _closed_port_url()
    values = tiny_recipe(
        data_dir,
        tmp_path / "out",
        feedback_backend="endpoint",
        feedback_endpoint=url,
        endpoint_max_retries=0,
    )
    message = _fails(tmp_path, capsys, values)
    assert message.startswith(f"feedback_endpoint: {url} does not answer: ")
    assert message.endswith("(start the server, or fix the URL)")


def test_a_hub_that_refuses_connections(tmp_path, data_dir, capsys, hub_clients):
    url = _closed_port_url()
    values = tiny_recipe(data_dir, tmp_path / "out", hub_endpoint=url, hub_namespace="team", hub_max_retries=1)
    message = _fails(tmp_path, capsys, values)
    assert message.startswith(f"hub_endpoint: {url} failed repo_exists 2 time(s), last with ConnectError")


def test_debug_adds_the_traceback(tmp_path, data_dir, capsys):
    values = tiny_recipe(data_dir, tmp_path / "out", model_name_or_path=str(tmp_path / "missing"))
    recipe = write_recipe(tmp_path / "recipe.yaml", **values)
    assert main(["run", "--config", str(recipe), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith(f"{PREFIX}model_name_or_path: ")


class FailingProxy:
    """A real HTTP proxy in front of a Hub that answers 500 to the requests `fail(index, method, path)` picks."""

    def __init__(self, upstream: str, fail):
        host, port = upstream.removeprefix("http://").split(":")
        proxy = self
        self.failed: list[str] = []
        self.count = 0
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    index, proxy.count = proxy.count, proxy.count + 1
                if fail(index, self.command, self.path):
                    proxy.failed.append(f"{self.command} {self.path}")
                    self._send(500, [("Content-Type", "application/json")], b'{"error": "injected"}')
                    return
                connection = http.client.HTTPConnection(host, int(port), timeout=120)
                skip = {"connection", "content-length", "transfer-encoding"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                connection.request(self.command, self.path, body=body or None, headers=headers)
                response = connection.getresponse()
                data = response.read()
                connection.close()
                self._send(response.status, response.getheaders(), data)

            def _send(self, status: int, headers, body: bytes) -> None:
                self.send_response(status)
                skip = {"transfer-encoding", "connection", "date", "server"}
                skip |= set() if self.command == "HEAD" else {"content-length"}
                for key, value in headers:
                    if key.lower() not in skip:
                        self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _any  # noqa: N815 - http.server's names

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub_clients(tmp_path):
    """The HF clients' process-wide endpoint, restored after the test (a Hub publisher points them at its Hub)."""
    with hf_clients(tmp_path / "hf-caches"):
        yield


def test_a_hub_answering_500_now_and_then_is_retried_to_the_end(tmp_path, data_dir, tiny_model, capsys, hub_clients):
    server, upstream = serve(tmp_path / "store")
    commits = {"seen": 0}

    def fail(index: int, method: str, path: str) -> bool:
        if path.endswith("/commit/main") or "/commit/" in path:
            commits["seen"] += 1
            return commits["seen"] == 1
        return index < 2

    proxy = FailingProxy(upstream, fail)
    try:
        values = tiny_recipe(
            data_dir,
            tmp_path / "out",
            hub_endpoint=proxy.url,
            hub_namespace="team",
            num_iterations=1,
        )
        assert main(["run", "--config", str(write_recipe(tmp_path / "r.yaml", **values))]) == 0, capsys.readouterr()
        assert len(proxy.failed) == 3 and any("/commit/" in request for request in proxy.failed), proxy.failed
        api = HfApi(endpoint=upstream)
        for stage in ("prompts", "candidates", "feedback", "refinements", "pairs"):
            assert [t.name for t in api.list_repo_refs(f"team/tiny-{stage}", repo_type="dataset").tags] == ["iter-0"]
        assert [t.name for t in api.list_repo_refs("team/tiny-adapter").tags] == ["iter-1"]
    finally:
        proxy.close()
        server.shutdown()
        server.server_close()
