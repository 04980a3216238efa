"""The shipped smoke recipe on the real SmolLM2-135M-Instruct: M0 -> M2 with a pair in every iteration, published
to the offline Hub (the default), then read back by tag in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from rlrf_hub.cli import main

READER = """
import json, sys
from datasets import load_dataset
from peft import PeftModel
from rlrf_hub.models import load_causal_lm

counts = {}
for t in (0, 1):
    for stage in ("candidates", "feedback", "refinements", "pairs"):
        rows = load_dataset(f"local/smollm2-135m-cpu-smoke-{stage}", revision=f"iter-{t}", split="train")
        counts[f"{stage}/{t}"] = len(rows)
        if stage == "feedback":
            judged = [r for r in rows if r["parse_status"] != "verifier"]
            assert judged and all(r["parse_status"] != "failed" for r in judged), "constrained judge replies parse"
base = load_causal_lm("embedded:smollm2-135m-instruct")
for t in (1, 2):
    model = PeftModel.from_pretrained(base, "local/smollm2-135m-cpu-smoke-adapter", revision=f"iter-{t}")
    assert any("lora_B" in name for name, _ in model.named_parameters())
print(json.dumps(counts))
"""


@pytest.mark.slow
def test_smoke_recipe_on_the_real_model(tmp_path, monkeypatch, data_dir):
    store = tmp_path / "store"
    hub = subprocess.Popen(
        [sys.executable, "-m", "rlrf_hub.cli", "hub", "serve", "--root", str(store)], stdout=subprocess.PIPE, text=True
    )
    try:
        url = hub.stdout.readline().rsplit(" at ", 1)[1].strip()
        monkeypatch.chdir(REPO)
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        out = tmp_path / "smoke"
        config = "recipes/smollm2-135m-cpu/smoke.yaml"
        assert main(["run", "--config", config, "--output_dir", str(out), "--hub_store", str(store)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert [row["iteration"] for row in summary] == [0, 1]
        env = {
            **os.environ,
            "HF_ENDPOINT": url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_CACHE": str(tmp_path / "fresh-hub-cache"),
            "HF_DATASETS_CACHE": str(tmp_path / "fresh-datasets-cache"),
        }
        done = subprocess.run([sys.executable, "-c", READER], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        counts = json.loads(done.stdout.strip().splitlines()[-1])
        for t, row in enumerate(summary):
            assert counts[f"pairs/{t}"] >= 1 and row["pairs"] == counts[f"pairs/{t}"]
            assert row["prompts"] <= 4 and row["candidates"] == counts[f"candidates/{t}"]
    finally:
        hub.terminate()
        hub.wait(10)
