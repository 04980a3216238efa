"""A whole run on a Hub: the offline Hub by default, resumed from the Hub by content key, unfinished stages
continued from the checkpoint parts pushed to the Hub, and every stage loadable by tag in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import datasets
import pytest
from conftest import Crash, crash_generate_on_call, tiny_recipe, write_recipe
from huggingface_hub import HfApi, constants, hf_api, metadata_load

from rlrf_hub.cli import main
from rlrf_hub.config import parse_recipe
from rlrf_hub.hub import serve
from rlrf_hub.loop import RunError, run

STAGES = ("candidates", "feedback", "refinements", "pairs")


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """The HF clients' global endpoint and caches, restored after the test; `fresh()` empties the caches, as on a
    machine that never saw the run."""
    for name in ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_HUB_DISABLE_XET", "HF_URL_HOSTS", "HF_HUB_CACHE"):
        monkeypatch.setattr(constants, name, getattr(constants, name))
    monkeypatch.setattr(hf_api.api, "endpoint", hf_api.api.endpoint)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", datasets.config.HF_ENDPOINT)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", datasets.config.HF_DATASETS_CACHE)
    for name in ("HF_ENDPOINT", "HF_HUB_DISABLE_XET", "HF_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.setenv(name, os.environ.get(name, ""))

    def fresh(name: str) -> None:
        hub_cache, datasets_cache = tmp_path / name / "hub-cache", tmp_path / name / "datasets-cache"
        monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
        monkeypatch.setenv("HF_DATASETS_CACHE", str(datasets_cache))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", datasets_cache)

    fresh("first-machine")
    return fresh


def _recipe(tmp_path, data_dir, name: str, **overrides):
    values = tiny_recipe(data_dir, tmp_path / name, **overrides)
    return parse_recipe(["--config", str(write_recipe(tmp_path / f"{name}.yaml", **values))])


def _no_generation(monkeypatch) -> None:
    from rlrf_hub.backends.transformers_backend import TransformersBackend

    def refuse(self, *args, **kwargs):
        raise AssertionError("a stage published for the same inputs was recomputed")

    monkeypatch.setattr(TransformersBackend, "generate", refuse)


def _start_hub_cli(root) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlrf_hub.cli", "hub", "serve", "--root", str(root)], stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    assert " at http://" in line, line
    return proc, line.rsplit(" at ", 1)[1].strip()


def test_default_offline_hub_then_resume_on_a_fresh_machine_by_content_key(
    tmp_path, data_dir, tiny_model, machine, monkeypatch, capsys
):
    """No namespace, no endpoint: the run starts an offline Hub over `hub_store` and publishes as `local/...`.
    A later run, with another output_dir and empty caches, reuses every stage through a `rlrf-hub hub serve`
    already running over the same store; a changed recipe under the same run_name is refused."""
    store = tmp_path / "store"
    settings = {"hub_endpoint": None, "hub_store": str(store), "num_iterations": 2}
    summaries = run(_recipe(tmp_path, data_dir, "first", **settings))
    assert "offline Hub started for this run" in capsys.readouterr().out
    entries = json.loads((tmp_path / "first" / "published.json").read_text())
    assert {e["repo_id"] for e in entries} == {f"local/tiny-{s}" for s in ("prompts", *STAGES, "adapter")}
    assert not (tmp_path / "first" / "iter-0" / "candidates").exists(), "the Hub, not output_dir, holds the stages"

    proc, url = _start_hub_cli(store)
    try:
        machine("second-machine")
        _no_generation(monkeypatch)
        again = run(_recipe(tmp_path, data_dir, "second", **settings))
        assert f"publishing to the offline Hub at {url}" in capsys.readouterr().out
        assert [s.pairs for s in again] == [s.pairs for s in summaries]
        second = json.loads((tmp_path / "second" / "published.json").read_text())
        assert {(e["repo_id"], e["revision"]) for e in second} == {(e["repo_id"], e["revision"]) for e in entries}

        api = HfApi(endpoint=url)
        card = api.hf_hub_download("local/tiny-candidates", "README.md", repo_type="dataset", revision="iter-1")
        lineage = metadata_load(card)["rlrf"]
        m1 = next(e for e in entries if e["name"] == "M1")
        assert lineage["policy"]["adapter"] == "local/tiny-adapter", "the card names the adapter repo, not a path"
        assert lineage["policy"]["adapter_revision"] == m1["revision"]
        assert len(lineage["content_key"]) == 64

        with pytest.raises(RunError, match="content key"):
            run(_recipe(tmp_path, data_dir, "changed", **settings, temperature=0.5))
    finally:
        proc.terminate()
        proc.wait(10)


def test_an_interrupted_stage_continues_on_another_machine_from_its_pushed_parts(
    tmp_path, data_dir, tiny_model, machine, monkeypatch
):
    from rlrf_hub.backends.transformers_backend import TransformersBackend

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
        calls = crash_generate_on_call(monkeypatch, 3)
        with pytest.raises(Crash):
            run(_recipe(tmp_path, data_dir, "crashed", **settings))
        api = HfApi(endpoint=url)
        branches = [b.name for b in api.list_repo_refs("team/tiny-candidates", repo_type="dataset").branches]
        (branch,) = [name for name in branches if name != "main"]
        assert branch.startswith("checkpoints/iter-0-"), "a branch per iteration and content key"
        pushed = api.list_repo_files("team/tiny-candidates", repo_type="dataset", revision=branch)
        assert sorted(p for p in pushed if p.startswith("checkpoint/")) == [
            "checkpoint/part-00000.parquet",
            "checkpoint/part-00001.parquet",
        ]
        saved = datasets.load_dataset(
            "team/tiny-candidates", data_files="checkpoint/*.parquet", revision=branch, split="train"
        )

        machine("second-machine")
        calls["n"], requests = 0, []

        def counting(self, batch, *args, **kwargs):
            requests.extend(batch)
            return original(self, batch, *args, **kwargs)

        monkeypatch.setattr(TransformersBackend, "generate", counting)
        run(_recipe(tmp_path, data_dir, "elsewhere", **settings))
        candidates = datasets.load_dataset("team/tiny-candidates", revision="iter-0", split="train")
        kept = {row["response_id"]: row["response"] for row in saved}
        assert all(row["response"] == kept[row["response_id"]] for row in candidates if row["response_id"] in kept)
        assert len(set(candidates["response_id"])) == len(candidates) and set(kept) < set(candidates["response_id"])
        prompts_sampled_again = {r.messages[-1]["content"] for r in requests if r.n == 3}
        assert not prompts_sampled_again & {row["prompt"] for row in saved}, "pulled parts are not sampled again"
        refs = api.list_repo_refs("team/tiny-candidates", repo_type="dataset")
        assert [b.name for b in refs.branches] == ["main"], "the checkpoint branch goes once the stage is published"
    finally:
        server.shutdown()
        server.server_close()


def test_a_run_published_to_the_offline_hub_loads_by_tag_in_a_fresh_process(tmp_path, data_dir, tiny_model, machine):
    """`hub_namespace` + `hub_endpoint` publish to that Hub (here one started by the test on a free port)."""
    server, url = serve(tmp_path / "store")
    try:
        recipe = tiny_recipe(data_dir, tmp_path / "out", num_iterations=1, hub_namespace="team", hub_endpoint=url)
        assert main(["run", "--config", str(write_recipe(tmp_path / "r.yaml", **recipe))]) == 0
        script = (
            "from datasets import load_dataset\n"
            "from peft import PeftModel\n"
            "from rlrf_hub.models import load_causal_lm\n"
            "for stage in ('candidates', 'feedback', 'refinements', 'pairs'):\n"
            "    rows = load_dataset(f'team/tiny-{stage}', revision='iter-0', split='train')\n"
            "    assert len(rows) > 0, stage\n"
            "base = load_causal_lm('embedded:tiny')\n"
            "model = PeftModel.from_pretrained(base, 'team/tiny-adapter', revision='iter-1')\n"
            "print('loaded', len(rows))\n"
        )
        env = {
            **os.environ,
            "HF_ENDPOINT": url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_CACHE": str(tmp_path / "hub-cache"),
            "HF_DATASETS_CACHE": str(tmp_path / "ds-cache"),
        }
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        entries = json.loads((tmp_path / "out" / "published.json").read_text())
        assert {e["repo_id"] for e in entries} >= {"team/tiny-pairs", "team/tiny-adapter"}
        from rlrf_hub.lineage import walk

        stages = [node.stage for node in walk("team/tiny-adapter", "iter-1")]
        assert stages[:3] == ["M1", "pairs", "feedback"] and "prompts" in stages
    finally:
        server.shutdown()
        server.server_close()
