"""One run per output_dir (a kernel lock that dies with its holder), and runs sharing a run_name on one Hub never
resume from each other's unfinished parts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import datasets
import pytest
from conftest import Crash, crash_generate_on_call, tiny_recipe, write_recipe
from huggingface_hub import HfApi, metadata_load

from rlrf_hub.cli import main
from rlrf_hub.config import parse_recipe
from rlrf_hub.hub import serve
from rlrf_hub.loop import run
from rlrf_hub.run_lock import LOCK_FILE, RunLock, RunLockedError, masked_command

HOLD = """
import sys, time
from rlrf_hub.run_lock import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold(folder, seconds: float) -> subprocess.Popen:
    """Another process holding the lock of `folder` for `seconds`."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _holder_pid(folder) -> int | None:
    try:
        return json.loads((folder / LOCK_FILE).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_a_second_run_on_the_same_output_dir_stops_at_once_naming_the_first(tmp_path, data_dir, tiny_model, capsys):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", **tiny_recipe(data_dir, out, num_iterations=1))
    second = ["run", "--config", str(recipe), "--seed", "7", "--num_candidates", "4"]
    parse_recipe(second[1:])  # imports done before the race starts
    first = subprocess.Popen(
        [sys.executable, "-m", "rlrf_hub.cli", "run", "--config", str(recipe)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while _holder_pid(out) != first.pid:
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.poll() else ""
            time.sleep(0.05)
        started = time.monotonic()
        assert main(second) == 2
        assert time.monotonic() - started < 10, "the second run stops at once"
        assert first.poll() is None, "the second run was refused while the first one ran"
        err = capsys.readouterr().err
        assert err.startswith(f"rlrf-hub run: error: output_dir: {out} is in use by another run (pid {first.pid} ")
        assert err.count("\n") == 1 and "--wait_for_lock" in err and "Traceback" not in err
    finally:
        _, stderr = first.communicate(timeout=900)
    assert first.returncode == 0, stderr
    candidates = datasets.load_dataset(str(out / "iter-0" / "candidates"), split="train")
    refinements = datasets.load_dataset(str(out / "iter-0" / "refinements"), split="train")
    feedback = datasets.load_dataset(str(out / "iter-0" / "feedback"), split="train")
    assert len(candidates) == 3 * len({row["prompt_id"] for row in candidates}), "the first run's 3 per prompt"
    assert set(feedback["response_id"]) == set(candidates["response_id"]) | set(refinements["response_id"])
    assert metadata_load(out / "iter-0" / "candidates" / "README.md")["rlrf"]["sampling"]["seed"] == 0
    assert not (out / LOCK_FILE).exists(), "the lock file goes with its run"


def test_a_lock_left_by_a_killed_run_blocks_nobody(tmp_path):
    folder = tmp_path / "out"
    holder = _hold(folder, 600)
    with pytest.raises(RunLockedError, match=f"pid {holder.pid} "):
        RunLock(folder).__enter__()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert _holder_pid(folder) == holder.pid, "the killed run left its lock file behind"
    with RunLock(folder):
        assert _holder_pid(folder) == os.getpid()


def test_a_stale_lock_file_does_not_stop_the_cli(tmp_path, data_dir, capsys):
    """The lock file of a dead run is there, the run goes on to its next check (here: a model that is missing)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "h", "started": "s", "command": "c"}))
    values = tiny_recipe(data_dir, out, model_name_or_path=str(tmp_path / "no-model"))
    assert main(["run", "--config", str(write_recipe(tmp_path / "r.yaml", **values))]) == 2
    err = capsys.readouterr().err
    assert "model_name_or_path:" in err and "in use" not in err


def test_wait_for_lock_queues_behind_the_holder(tmp_path, capsys):
    folder = tmp_path / "out"
    holder = _hold(folder, 1.5)
    started = time.monotonic()
    with RunLock(folder, wait=True):
        assert time.monotonic() - started > 1.0, "the lock came only once the holder let it go"
        assert _holder_pid(folder) == os.getpid()
    holder.wait(10)
    assert f"in use by another run (pid {holder.pid} " in capsys.readouterr().err
    assert not folder.exists(), "a folder the lock created and nothing else used is removed again"


def test_output_dir_lock_refuses_in_process_too(tmp_path):
    with RunLock(tmp_path / "out"):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()} "):
            RunLock(tmp_path / "out").__enter__()


def test_the_lock_file_never_holds_a_token():
    command = masked_command(["rlrf-hub", "run", "--hub_token", "hf_abcdefghijkl", "--api_key=xyz", "--seed", "3"])
    assert command == "rlrf-hub run --hub_token *** --api_key=*** --seed 3"
    assert masked_command(["run", "--x", "hf_abcdefghijklmnop"]) == "run --x hf_***"


def test_runs_sharing_a_run_name_never_resume_from_each_others_parts(tmp_path, data_dir, tiny_model, monkeypatch):
    """Run A dies in its candidates with parts pushed to the Hub; run B, same run_name and Hub but another seed and
    output_dir, must sample its own candidates instead of publishing A's parts as its own."""
    from rlrf_hub.backends.transformers_backend import TransformersBackend
    from rlrf_hub.stages import backends

    server, url = serve(tmp_path / "store")
    try:
        settings = {
            "hub_endpoint": url,
            "hub_namespace": "team",
            "checkpoint_push_interval": 0,
            "generation_batch_size": 2,
            "num_iterations": 1,
        }
        original = TransformersBackend.generate
        crash_generate_on_call(monkeypatch, 3)
        with pytest.raises(Crash):
            run(
                parse_recipe(
                    [
                        "--config",
                        str(write_recipe(tmp_path / "a.yaml", **tiny_recipe(data_dir, tmp_path / "a", **settings))),
                    ]
                )
            )
        api = HfApi(endpoint=url)
        (branch,) = [
            b.name
            for b in api.list_repo_refs("team/tiny-candidates", repo_type="dataset").branches
            if b.name != "main"
        ]
        parts = datasets.load_dataset(
            "team/tiny-candidates", data_files="checkpoint/*.parquet", revision=branch, split="train"
        )
        assert len(parts) > 0

        monkeypatch.setattr(TransformersBackend, "generate", original)

        def no_judge(settings):
            raise Crash("lost")

        monkeypatch.setattr(backends, "judge_backend", no_judge)
        values = tiny_recipe(data_dir, tmp_path / "b", seed=7, **settings)
        with pytest.raises(Crash):
            run(parse_recipe(["--config", str(write_recipe(tmp_path / "b.yaml", **values))]))
        published = datasets.load_dataset("team/tiny-candidates", revision="iter-0", split="train")
        mine = {row["response_id"]: row["response"] for row in published}
        assert all(mine[row["response_id"]] != row["response"] for row in parts), "none of A's rows in B's stage"
        card = metadata_load(
            api.hf_hub_download("team/tiny-candidates", "README.md", repo_type="dataset", revision="iter-0")
        )
        assert card["rlrf"]["sampling"]["seed"] == 7
    finally:
        server.shutdown()
        server.server_close()
