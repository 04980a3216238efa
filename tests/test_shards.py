"""Sharded generation (`rlrf-hub run --shard i/N`): workers on one Hub publish, row for row, what one unsharded run
of the same recipe publishes, each doing only its own chunks; a restarted worker takes back only its own parts."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import datasets
import pytest
import torch
from conftest import tiny_recipe, write_recipe
from huggingface_hub import HfApi, constants, hf_api, metadata_load

from rlrf_hub.cli import main
from rlrf_hub.config import parse_recipe
from rlrf_hub.hub import serve
from rlrf_hub.hub.server import configure_clients
from rlrf_hub.ids import prompt_id
from rlrf_hub.loop import RunError, run
from rlrf_hub.publishing import HubCheckpointMirror, StageCheckpoint
from rlrf_hub.sharding import Shard

STAGES = ("candidates", "feedback", "refinements", "pairs")
# Small chunks so that both workers get some of every stage: one prompt per candidates chunk (2 * 2 sequences,
# 3 samples), two per refinements chunk, eight responses per judge chunk. Pushes only when a share is done.
SIZES = {
    "num_iterations": 1,
    "generation_batch_size": 2,
    "feedback_batch_size": 2,
    "checkpoint_push_interval": 3600,
    "shard_wait_timeout": 600,
    "hub_namespace": "team",
}


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """The HF clients' global endpoint and caches of this process, restored after the test."""
    for name in ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_HUB_DISABLE_XET", "HF_URL_HOSTS", "HF_HUB_CACHE"):
        monkeypatch.setattr(constants, name, getattr(constants, name))
    monkeypatch.setattr(hf_api.api, "endpoint", hf_api.api.endpoint)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", datasets.config.HF_ENDPOINT)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "in-process" / "datasets-cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "in-process" / "hub-cache"))
    for name in ("HF_ENDPOINT", "HF_HUB_DISABLE_XET", "HF_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.setenv(name, os.environ.get(name, ""))


@pytest.fixture
def hub(tmp_path):
    server, url = serve(tmp_path / "store")
    yield url
    server.shutdown()
    server.server_close()


def _start_worker(tmp_path, recipe, url: str, shard: str) -> tuple[subprocess.Popen, object]:
    """A worker as a user starts one: its own process, output_dir and caches; one torch thread, as in-process."""
    name = f"worker-{shard.replace('/', 'of')}"
    env = {
        **os.environ,
        "HF_ENDPOINT": url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_CACHE": str(tmp_path / name / "hub-cache"),
        "HF_DATASETS_CACHE": str(tmp_path / name / "datasets-cache"),
        "OMP_NUM_THREADS": "1",
    }
    command = ["--config", str(recipe), "--shard", shard, "--output_dir", str(tmp_path / name / "out")]
    log = open(tmp_path / f"{name}.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "rlrf_hub.cli", "run", *command], env=env, stdout=log, stderr=log)
    return proc, log


def _wait(worker) -> str:
    proc, log = worker
    try:
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.seek(0)
        text = log.read()
        log.close()
    assert proc.returncode == 0, text[-4000:]
    return text


def _rows(stage: str, run_name: str) -> list[dict]:
    return list(datasets.load_dataset(f"team/{run_name}-{stage}", revision="iter-0", split="train"))


def test_two_workers_publish_row_for_row_what_one_run_publishes(tmp_path, data_dir, tiny_model, hub, machine):
    values = tiny_recipe(data_dir, tmp_path / "single", run_name="sharded", hub_endpoint=hub, **SIZES)
    recipe = write_recipe(tmp_path / "recipe.yaml", **values)
    workers = [_start_worker(tmp_path, recipe, hub, f"{i}/2") for i in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(parse_recipe(["--config", str(recipe), "--run_name", "single"]))
    finally:
        torch.set_num_threads(threads)
        logs = [_wait(worker) for worker in workers]

    api = HfApi(endpoint=hub)
    for stage in STAGES:
        sharded, single = _rows(stage, "sharded"), _rows(stage, "single")
        assert sharded and sharded == single, f"{stage}: the merged shards differ from the unsharded run"
        if stage == "pairs":
            continue
        card = api.hf_hub_download(f"team/sharded-{stage}", "README.md", repo_type="dataset", revision="iter-0")
        shares = metadata_load(card)["rlrf"]["shards"]
        assert shares["count"] == 2 and sum(shares["rows"].values()) == len(sharded)
        for i, log in enumerate(logs):
            done = re.search(rf"shard {i}/2: done with my share of {stage} of iteration 0: (\d+) rows", log)
            assert done and int(done[1]) == shares["rows"][f"s{i}of2"] > 0, f"worker {i} did no {stage}"
    card = api.hf_hub_download("team/sharded-candidates", "README.md", repo_type="dataset", revision="iter-0")
    candidates = metadata_load(card)
    assert candidates["rlrf"]["shards"]["rows"] == {"s0of2": 9, "s1of2": 6}, "5 one-prompt chunks dealt in turn"
    refs = api.list_repo_refs("team/sharded-feedback", repo_type="dataset")
    assert [b.name for b in refs.branches] == ["main"], "worker 0 deletes the checkpoint branch once published"
    assert api.list_repo_refs("team/sharded-adapter").tags[0].name == "iter-1"
    assert "merged candidates of iteration 0" in logs[0] and "merged" not in logs[1]


def test_a_restarted_worker_pulls_back_its_own_parts_and_the_merger_all(tmp_path, hub, machine):
    configure_clients(hub)
    api = HfApi(endpoint=hub)

    def checkpoint(folder: str, shard: str) -> StageCheckpoint:
        mirror = HubCheckpointMirror(api, "team/t-prompts", "dataset", "checkpoints/iter-0", interval=3600)
        return StageCheckpoint(tmp_path / folder, "prompts", mirror, Shard.parse(shard))

    rows = [
        {"prompt_id": prompt_id(f"q{i}"), "prompt": f"q{i}", "task": "general", "reference": None, "source": "t"}
        for i in range(6)
    ]
    first, second = checkpoint("a", "0/2"), checkpoint("b", "1/2")
    first.append(rows[:2])
    second.append(rows[2:3])
    second.append(rows[3:5])
    first.mark_done("prompts", {"rows": 2})
    second.mark_done("prompts", {"rows": 3})
    files = api.list_repo_files("team/t-prompts", repo_type="dataset", revision="checkpoints/iter-0")
    pushed = {path.removeprefix("checkpoint/") for path in files if path.startswith("checkpoint/")}
    assert pushed == {
        "part-s0of2-00000.parquet",
        "part-s1of2-00000.parquet",
        "part-s1of2-00001.parquet",
        "prompts-s0of2.done",
        "prompts-s1of2.done",
    }, "each push was forced by the finished share, whatever the interval"

    restarted = checkpoint("c", "1/2")
    assert restarted.done("prompt_id") == {r["prompt_id"] for r in rows[2:5]}
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "part-s1of2-00000.parquet",
        "part-s1of2-00001.parquet",
        "prompts-s1of2.done",
    ]
    restarted.append(rows[5:])
    assert (tmp_path / "c" / "part-s1of2-00002.parquet").is_file(), "its numbering goes on from its own parts"

    merger = checkpoint("d", "0/2")
    assert merger.done("prompt_id") == {r["prompt_id"] for r in rows[:2]}
    merger.pull_all()
    assert sorted(r["prompt_id"] for r in merger.rows()) == sorted(r["prompt_id"] for r in rows)
    assert merger.markers("prompts") == {
        "s0of2": {"shard": "0/2", "rows": 2},
        "s1of2": {"shard": "1/2", "rows": 3},
    }


def test_bad_shards_are_refused_naming_the_field(tmp_path, data_dir, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", **tiny_recipe(data_dir, tmp_path / "out", hub_endpoint="offline"))
    for shard, message in (("2/2", "needs 0 <= i < N"), ("1", "must be `i/N`"), ("1/0", "needs 0 <= i < N")):
        assert main(["run", "--config", str(recipe), "--shard", shard]) == 2
        err = capsys.readouterr().err
        assert "error: shard: " in err and message in err, err
    folders = write_recipe(tmp_path / "f.yaml", **tiny_recipe(data_dir, tmp_path / "out"))
    assert main(["run", "--config", str(folders), "--shard", "1/2"]) == 2
    assert "shard: the workers of a sharded run meet on a Hub" in capsys.readouterr().err


def test_a_worker_alone_gives_up_after_shard_wait_timeout(tmp_path, data_dir, hub, machine):
    settings = {**SIZES, "shard_wait_timeout": 1, "shard": "1/2"}
    values = tiny_recipe(data_dir, tmp_path / "out", hub_endpoint=hub, **settings)
    with pytest.raises(
        RunError, match=r"shard 1/2: gave up after \d+ s \(shard_wait_timeout\) waiting for worker 0 to publish"
    ):
        run(parse_recipe(["--config", str(write_recipe(tmp_path / "r.yaml", **values))]))
