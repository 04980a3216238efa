"""The shipped smoke recipe on the real SmolLM2-135M-Instruct: M0 -> M2 with a pair in every iteration."""

from __future__ import annotations

import json

import pytest
from conftest import REPO
from datasets import load_dataset

from rlrf_hub.cli import main


@pytest.mark.slow
def test_smoke_recipe_on_the_real_model(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(REPO)
    out = tmp_path / "smoke"
    assert main(["run", "--config", "recipes/smollm2-135m-cpu/smoke.yaml", "--output_dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [row["iteration"] for row in summary] == [0, 1]
    for t, row in enumerate(summary):
        pairs = load_dataset(str(out / f"iter-{t}" / "pairs"), split="train")
        assert len(pairs) >= 1 and row["pairs"] == len(pairs)
        assert row["prompts"] <= 4
        feedback = load_dataset(str(out / f"iter-{t}" / "feedback"), split="train")
        judged = [r for r in feedback if r["parse_status"] != "verifier"]
        assert judged and all(r["parse_status"] != "failed" for r in judged), "constrained judge replies parse"
    from peft import PeftModel

    from rlrf_hub.models import load_causal_lm

    model = PeftModel.from_pretrained(load_causal_lm("embedded:smollm2-135m-instruct"), str(out / "adapters" / "M2"))
    assert any("lora_B" in name for name, _ in model.named_parameters())
