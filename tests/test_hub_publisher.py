"""`HubPublisher` against the offline Hub with the real `huggingface_hub`, `datasets` and `peft` clients."""

import os

os.environ["HF_HUB_DISABLE_XET"] = "1"

import json
import subprocess
import sys

import pytest
import torch
from conftest import hf_clients
from huggingface_hub import DatasetCard, HfApi, ModelCard, hf_hub_download

from rlrf_hub.hub.server import serve
from rlrf_hub.ids import prompt_id, response_id
from rlrf_hub.publishing import Published
from rlrf_hub.publishing.hub import HubPublisher, PublishConflictError

TOKEN = "hf_test_secret_token_0123456789"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """One server for the module; client caches in empty temporary folders."""
    server, url = serve(tmp_path_factory.mktemp("hub-root"))
    with hf_clients(tmp_path_factory.mktemp("hf-caches"), url):
        yield url
    server.shutdown()
    server.server_close()


def _prompt_rows(n: int) -> list[dict]:
    return [
        {"prompt_id": prompt_id(f"q{i}"), "prompt": f"q{i}", "task": "general", "reference": None, "source": "test"}
        for i in range(n)
    ]


def _candidate_rows(prompts: list[dict], iteration: int, samples: int = 2) -> list[dict]:
    rows = []
    for prompt in prompts:
        for j in range(samples):
            answer = f"answer {j} to {prompt['prompt']} (iteration {iteration})"
            rows.append(
                {
                    "prompt_id": prompt["prompt_id"],
                    "response_id": response_id(prompt["prompt_id"], iteration, "candidate", j),
                    "iteration": iteration,
                    "origin": "candidate",
                    "sample_index": j,
                    "parent_id": None,
                    "task": prompt["task"],
                    "prompt": prompt["prompt"],
                    "messages": [
                        {"role": "user", "content": prompt["prompt"]},
                        {"role": "assistant", "content": answer},
                    ],
                    "response": answer,
                    "num_tokens": 7 + j,
                    "finish_reason": "stop",
                    "policy": "tiny",
                }
            )
    return rows


def _lineage(stage: str, iteration: int, parents: list[Published] = ()) -> dict:
    return {
        "run": "run",
        "stage": stage,
        "iteration": iteration,
        "policy": {"model": "tiny", "revision": None},
        "parents": [{"stage": p.name, "location": p.location, "revision": p.revision} for p in parents],
        "counts": {"rows": 2},
    }


def _commits(repo_id: str, repo_type: str) -> list[str]:
    return [c.commit_id for c in HfApi(token=TOKEN).list_repo_commits(repo_id, repo_type=repo_type)]


_FRESH_READER = """
import json, sys
from rlrf_hub.publishing.hub import HubPublisher
from datasets import load_dataset

url, work_dir = sys.argv[1:3]
publisher = HubPublisher("alice", "run", work_dir, endpoint=url)
out = {}
for stage in ("prompts", "candidates"):
    found = publisher.find(stage, 0)
    out[stage] = {
        "revision": found.revision,
        "location": found.location,
        "loaded": list(publisher.load(stage, 0)),
        "by_tag": list(load_dataset(found.location, revision="iter-0", split="train")),
    }
out["missing"] = publisher.find("candidates", 5) is None and publisher.find("feedback", 0) is None
print(json.dumps(out))
"""


def test_stages_are_tagged_commits_that_a_fresh_process_loads(hub, tmp_path):
    publisher = HubPublisher("alice", "run", tmp_path / "work", endpoint=hub, token=TOKEN)
    assert publisher.find("prompts", 0) is None
    prompts = _prompt_rows(3)
    prompts_pub = publisher.publish_dataset("prompts", 0, prompts, _lineage("prompts", 0), "rows")
    candidates = _candidate_rows(prompts, 0)
    candidates_pub = publisher.publish_dataset(
        "candidates", 0, candidates, _lineage("candidates", 0, [prompts_pub]), "rows"
    )
    assert candidates_pub == Published("dataset", "candidates", 0, "alice/run-candidates", candidates_pub.revision)
    assert publisher.find("candidates", 0) == candidates_pub

    for pub in (prompts_pub, candidates_pub):
        commits = _commits(pub.location, "dataset")
        assert commits[0] == pub.revision and len(commits) <= 2
        refs = HfApi().list_repo_refs(pub.location, repo_type="dataset")
        assert {(t.name, t.target_commit) for t in refs.tags} == {("iter-0", pub.revision)}

    readme = hf_hub_download("alice/run-candidates", "README.md", repo_type="dataset", revision="iter-0")
    card = DatasetCard.load(readme)
    assert card.data.configs[0]["data_files"][0]["path"].startswith("data/train-")
    assert card.data.rlrf["stage"] == "candidates"
    assert card.data.rlrf["parents"][0] == {
        "stage": "prompts",
        "location": "alice/run-prompts",
        "revision": prompts_pub.revision,
    }
    assert 'load_dataset("alice/run-candidates"' in card.text

    result = subprocess.run(
        [sys.executable, "-c", _FRESH_READER, hub, str(tmp_path / "fresh")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "c1"), "HF_DATASETS_CACHE": str(tmp_path / "c2")},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = json.loads(result.stdout.splitlines()[-1])
    for pub, rows in ((prompts_pub, prompts), (candidates_pub, candidates)):
        assert fresh[pub.name]["revision"] == pub.revision and fresh[pub.name]["location"] == pub.location
        assert fresh[pub.name]["loaded"] == rows
        assert fresh[pub.name]["by_tag"] == rows
    assert fresh["missing"]

    entries = json.loads((tmp_path / "work" / "published.json").read_text())
    assert [(e["name"], e["repo_id"], e["repo_type"], e["tag"], e["revision"]) for e in entries] == [
        ("prompts", "alice/run-prompts", "dataset", "iter-0", prompts_pub.revision),
        ("candidates", "alice/run-candidates", "dataset", "iter-0", candidates_pub.revision),
    ]
    assert TOKEN not in json.dumps(entries) + card.content + repr(publisher)


def test_each_iteration_is_one_commit_and_tags_are_never_moved(hub, tmp_path):
    publisher = HubPublisher("bob", "run", tmp_path / "work", endpoint=hub, token=TOKEN)
    prompts = _prompt_rows(2)
    first = publisher.publish_dataset("candidates", 0, _candidate_rows(prompts, 0), _lineage("candidates", 0), "rows")
    before = _commits("bob/run-candidates", "dataset")
    second = publisher.publish_dataset("candidates", 1, _candidate_rows(prompts, 1), _lineage("candidates", 1), "rows")
    after = _commits("bob/run-candidates", "dataset")
    assert after == [second.revision, *before] and first.revision == before[0]
    refs = HfApi().list_repo_refs("bob/run-candidates", repo_type="dataset")
    assert {(t.name, t.target_commit) for t in refs.tags} == {("iter-0", first.revision), ("iter-1", second.revision)}
    shards = [f for f in HfApi().list_repo_files("bob/run-candidates", repo_type="dataset", revision="iter-1")]
    assert len([f for f in shards if f.endswith(".parquet")]) == 1, shards

    again = publisher.publish_dataset("candidates", 0, _candidate_rows(prompts, 0), _lineage("candidates", 0), "rows")
    assert again.revision == first.revision
    assert _commits("bob/run-candidates", "dataset") == after
    with pytest.raises(PublishConflictError, match="iter-0") as caught:
        publisher.publish_dataset(
            "candidates", 0, _candidate_rows(_prompt_rows(3), 0), _lineage("candidates", 0), "rows"
        )
    assert TOKEN not in str(caught.value)
    assert publisher.load("candidates", 1)["response_id"] == [r["response_id"] for r in _candidate_rows(prompts, 1)]


def test_adapter_is_a_tagged_commit_that_peft_loads(hub, tmp_path, tiny_model):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    publisher = HubPublisher("carol", "run", tmp_path / "work", endpoint=hub, token=TOKEN)
    assert publisher.find_adapter(1) is None
    adapter = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    adapter.save_pretrained(publisher.adapter_dir(1))
    pairs = Published("dataset", "pairs", 0, "carol/run-pairs", "a" * 40)
    lineage = {
        **_lineage("adapter", 0, [pairs]),
        "counts": {"pairs": 4},
        "model_name": "M1",
        "method": "dpo",
        "trained_from": "M0 (the base model)",
        "reference_model": "M0 (the base model)",
    }
    published = publisher.publish_adapter(1, lineage, {"train_loss": 0.69}, {"beta": 0.1})
    assert _commits("carol/run-adapter", "model")[0] == published.revision
    refs = HfApi().list_repo_refs("carol/run-adapter")
    assert {(t.name, t.target_commit) for t in refs.tags} == {("iter-1", published.revision)}

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    restored = PeftModel.from_pretrained(base, "carol/run-adapter", revision="iter-1", cache_dir=tmp_path / "cache")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(restored(ids).logits, adapter(ids).logits)

    fresh = HubPublisher("carol", "run", tmp_path / "fresh", endpoint=hub)
    found = fresh.find_adapter(1)
    assert found.revision == published.revision and fresh.find_adapter(2) is None
    assert found.location == "carol/run-adapter", "the card names the adapter by its repo, not a local path"
    card = ModelCard.load(fresh.adapter_dir(1) / "README.md")
    assert card.data.rlrf["parents"][0]["revision"] == "a" * 40 and card.data.base_model == "tiny"
    assert (fresh.adapter_dir(1) / "adapter_config.json").is_file()
    again = fresh.publish_adapter(1, lineage, {"train_loss": 0.69}, {"beta": 0.1})
    assert again.revision == published.revision, "re-publishing the downloaded adapter is a no-op"
    entry = json.loads((tmp_path / "work" / "published.json").read_text())[0]
    assert entry["repo_id"] == "carol/run-adapter" and entry["repo_type"] == "model" and entry["tag"] == "iter-1"
    assert entry["location"] == "carol/run-adapter" and entry["revision"] == published.revision
    assert TOKEN not in card.content + json.dumps(entry)
