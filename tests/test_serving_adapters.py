"""LoRA adapters in `rlrf-hub serve`: folders preloaded at start, Hub adapters loaded on first use (offline Hub),
chosen per request. Adapter paths a request names are refused: tests/test_serving_security.py."""

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch

from rlrf_hub.hub.server import serve
from rlrf_hub.hub.store import Operation, Store
from rlrf_hub.serving.launch import spawn_server, start_server

PROMPT = "Write one word:"


def make_adapter(tiny_model: str, folder: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights, strong enough to move the tiny model's samples."""
    from peft import LoraConfig, get_peft_model

    from rlrf_hub.models import load_causal_lm

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(load_causal_lm(tiny_model), config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(50)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return make_adapter(tiny_model, root / "lora-a", 1), make_adapter(tiny_model, root / "lora-b", 2)


@pytest.fixture(scope="module")
def server(adapters):
    named = [str(adapter) for adapter in adapters]
    with start_server("embedded:tiny", adapters=named, threads=1, max_total_tokens=256) as handle:
        yield handle


def sample(server, adapter_id=None, seed=0, max_new_tokens=12):
    parameters = {"max_new_tokens": max_new_tokens, "seed": seed, "do_sample": True, "details": True}
    if adapter_id is not None:
        parameters["adapter_id"] = adapter_id
    response = requests.post(server.url + "/generate", json={"inputs": PROMPT, "parameters": parameters}, timeout=60)
    assert response.status_code == 200, response.text
    return [token["id"] for token in response.json()["details"]["tokens"]]


def test_adapter_changes_the_samples(server, adapters):
    base, tuned = sample(server), sample(server, str(adapters[0]))
    assert base != tuned
    assert sample(server) == base and sample(server, str(adapters[0])) == tuned
    assert str(adapters[0]) in requests.get(server.url + "/info", timeout=10).json()["adapters"]


def test_each_adapter_named_at_start_is_served(server, adapters):
    samples = [sample(server), sample(server, str(adapters[0])), sample(server, str(adapters[1]))]
    assert len({tuple(tokens) for tokens in samples}) == 3
    assert set(map(str, adapters)) <= set(requests.get(server.url + "/info", timeout=10).json()["adapters"])


def test_mixed_adapters_in_flight_match_sequential_results(server, adapters):
    jobs = [(adapter, seed) for seed in (5, 6) for adapter in (None, str(adapters[0]), str(adapters[1]))]
    sequential = [sample(server, adapter, seed) for adapter, seed in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        concurrent = list(pool.map(lambda job: sample(server, *job), jobs))
    assert concurrent == sequential


def test_chat_model_field_selects_an_adapter(server, adapters, tmp_path):
    def chat(**extra):
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "seed": 3, **extra}
        response = requests.post(server.url + "/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    base = chat(model="tgi")
    tuned = chat(model=str(adapters[0]))
    assert tuned["model"] == str(adapters[0]) and base["model"] == "embedded:tiny"
    assert tuned["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"]
    assert chat(adapter_id=str(adapters[0]))["choices"] == tuned["choices"]
    # A folder not named at start is not loaded: like any name that is no adapter, it means the base model.
    copy = shutil.copytree(adapters[0], tmp_path / "copy-of-a")
    assert chat(model=str(copy))["choices"] == base["choices"]
    # OpenAI clients put any model name there: one that is no adapter means the base model.
    for name in ("dummy", "embedded:tiny", "nobody/not-an-adapter"):
        other = chat(model=name)
        assert other["model"] == "embedded:tiny" and other["choices"] == base["choices"]


def test_unknown_adapter_is_a_validation_error(server, tmp_path):
    (tmp_path / "not-an-adapter").mkdir()
    for adapter_id in (str(tmp_path / "missing"), str(tmp_path / "not-an-adapter")):
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 2, "adapter_id": adapter_id}}
        response = requests.post(server.url + "/generate", json=body, timeout=60)
        assert response.status_code == 422
        assert response.json()["error_type"] == "validation" and "adapter_id" in response.json()["error"]


def publish(store: Store, repo_id: str, folder: Path, tag: str) -> None:
    store.create_repo("model", repo_id)
    operations = []
    for path in sorted(folder.iterdir()):
        sha256, _ = store.put_bytes(path.read_bytes())
        operations.append(Operation("add", path.name, sha256, lfs=path.suffix == ".safetensors"))
    store.create_commit("model", repo_id, "main", operations, "upload adapter")
    store.create_ref("model", repo_id, "tags", tag, "main")


def test_spawned_server_loads_hub_adapters_on_first_use(server, adapters, tmp_path):
    """A subprocess server, pointed at an offline Hub, samples from a Hub adapter named `repo@revision`."""
    root = tmp_path / "hub"
    hub, url = serve(root)
    try:
        publish(Store(root), "tester/lora-a", adapters[0], "v1")
        env = {"HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
        env["HF_HUB_OFFLINE"] = "0"
        with spawn_server("embedded:tiny", env=env, threads=1, max_total_tokens=256) as spawned:
            assert sample(spawned, "tester/lora-a@v1") == sample(server, str(adapters[0]))
            assert "tester/lora-a@v1" in requests.get(spawned.url + "/info", timeout=10).json()["adapters"]
            body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 2, "adapter_id": "tester/missing@v1"}}
            missing = requests.post(spawned.url + "/generate", json=body, timeout=60)
            assert missing.status_code == 422 and missing.json()["error_type"] == "validation"
            process = spawned.process
        assert process.poll() is not None
    finally:
        hub.shutdown()
        hub.server_close()
    assert os.environ.get("HF_ENDPOINT") != url  # the test process's clients were left alone
