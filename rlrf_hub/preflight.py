"""What a run checks before its first stage: every model and endpoint the recipe names can be used.

A wrong path, a truncated weights file or a judge server that is down would otherwise surface only when the stage
that needs it starts, possibly hours in (the judge after all the candidates). Each check is cheap: a model folder's
config is loaded and its safetensors headers are read (not the tensors); a Hub model's config is fetched; an
endpoint is asked who it is (`GET /info`, else `/v1/models`), as its backend will. Problems are `RecipeError`s that
name the recipe field.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path

from .config import Recipe, RecipeError
from .models import EMBEDDED_MODEL, TINY_MODEL, resolve_model

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS = "model.safetensors"
PYTORCH_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MAX_HEADER_BYTES = 100 * 1024 * 1024
JUDGED_EVAL_TASKS = {"factscore", "just_eval"}


def check_recipe_resources(recipe: Recipe) -> None:
    """Every model and endpoint `recipe` will use answers; the first that does not is a `RecipeError`."""
    r, m = recipe.rlrf, recipe.model
    check_model("model_name_or_path", m.model_name_or_path, m.model_revision)
    if r.policy_backend == "endpoint":
        check_endpoints("policy_endpoint", r.policy_endpoint, recipe)
    if r.feedback_backend == "endpoint":
        check_endpoints("feedback_endpoint", r.feedback_endpoint, recipe)
    else:
        check_model("feedback_model", r.feedback_model, r.feedback_revision)
    if r.reward_model:
        check_model("reward_model", r.reward_model, r.reward_revision)
    if r.eval_judge and JUDGED_EVAL_TASKS & set(r.eval_tasks):
        _check_eval_judge(recipe)


def _check_eval_judge(recipe: Recipe) -> None:
    judge = recipe.rlrf.eval_judge
    if re.match(r"https?://", judge):
        check_endpoints("eval_judge", [judge], recipe)
        return
    from .evaluation.judging import split_revision

    try:
        name, revision = split_revision(judge)
    except ValueError as error:
        raise RecipeError(f"eval_judge: {error} (give NAME, NAME@REVISION or an http(s) URL)") from None
    check_model("eval_judge", name, revision)


def check_model(field: str, name: str, revision: str | None) -> None:
    """`name` is an embedded model, a usable model folder, or a model the Hub has."""
    if name in (EMBEDDED_MODEL, TINY_MODEL):
        try:
            folder = Path(resolve_model(name))
        except FileNotFoundError as error:
            raise RecipeError(f"{field}: {name}: {error}") from None
    elif Path(name).exists():
        folder = Path(name)
    elif _is_hub_id(name):
        _check_hub_model(field, name, revision)
        return
    else:
        raise RecipeError(f"{field}: {name} does not exist (give a model folder, a Hub model id, or {EMBEDDED_MODEL})")
    check_model_folder(field, folder)


def _is_hub_id(name: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _check_hub_model(field: str, name: str, revision: str | None) -> None:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"the Hub at {constants.ENDPOINT}"
    try:
        hf_hub_download(name, "config.json", revision=revision)
    except GatedRepoError:
        raise RecipeError(f"{field}: {name} is gated on {where} (accept its licence and set HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise RecipeError(
            f"{field}: {name} is neither a folder here nor a model on {where} (check the path or the model id)"
        ) from None
    except RevisionNotFoundError:
        raise RecipeError(f"{field}: {name} has no revision {revision!r} on {where} (check the revision)") from None
    except LocalEntryNotFoundError:
        raise RecipeError(
            f"{field}: {name} is not a folder here and {where} cannot be reached to fetch it (connect, or give a "
            "local folder)"
        ) from None
    except EntryNotFoundError:
        raise RecipeError(f"{field}: {name} on {where} has no config.json (is it a transformers model?)") from None


def check_model_folder(field: str, folder: Path) -> None:
    """A transformers model folder (or a PEFT adapter folder) whose config loads and whose weights are whole."""
    if not folder.is_dir():
        raise RecipeError(f"{field}: {folder} is a file, not a model folder (give the folder save_pretrained wrote)")
    if (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file():
        _check_weight_files(field, folder, [n for n in ADAPTER_WEIGHTS if (folder / n).is_file()])
        return
    if not (folder / "config.json").is_file():
        raise RecipeError(f"{field}: {folder} has no config.json (give the folder save_pretrained wrote)")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(folder)
    except Exception as error:  # noqa: BLE001 - whatever transformers raises, the config is unusable
        raise RecipeError(f"{field}: {folder}/config.json does not load: {_one_line(error)} (repair it)") from None
    _check_weight_files(field, folder, _weight_files(field, folder))


def _weight_files(field: str, folder: Path) -> list[str]:
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            return sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as error:
            raise RecipeError(f"{field}: {index} is not a safetensors index: {_one_line(error)} (repair it)") from None
    return [name for name in (SAFETENSORS, *PYTORCH_WEIGHTS) if (folder / name).is_file()][:1]


def _check_weight_files(field: str, folder: Path, names: list[str]) -> None:
    if not names:
        raise RecipeError(f"{field}: {folder} holds no weights file (model.safetensors or pytorch_model.bin)")
    for name in names:
        path = folder / name
        if not path.is_file():
            raise RecipeError(f"{field}: {path} is missing (the index names it; copy or download it again)")
        if path.suffix == ".safetensors":
            check_safetensors(field, path)
        elif path.suffix == ".bin" and _cut_zip(path):
            raise RecipeError(f"{field}: {path} is damaged or truncated (copy or download it again)")


def _cut_zip(path: Path) -> bool:
    """`torch.save` writes a zip archive, whose directory sits at the end: a cut file has none."""
    with open(path, "rb") as f:
        magic = f.read(4)
    return path.stat().st_size == 0 or (magic == b"PK\x03\x04" and not zipfile.is_zipfile(path))


def check_safetensors(field: str, path: Path) -> None:
    """The file is as long as its header says: the header (8-byte length, then JSON) gives every tensor's byte
    range, so a truncated download or copy shows without reading the tensors."""
    size = path.stat().st_size
    problem = None
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if length is None or length > min(size - 8, MAX_HEADER_BYTES):
            problem = "its header is cut off"
        else:
            try:
                header = json.loads(f.read(length))
                end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                problem = "its header is not valid safetensors JSON"
            else:
                if 8 + length + end != size:
                    problem = f"it has {size} bytes where its header describes {8 + length + end}"
    if problem:
        raise RecipeError(f"{field}: {path} is damaged or truncated: {problem} (copy, download or convert it again)")


def check_endpoints(field: str, urls: list[str], recipe: Recipe) -> None:
    """Each server answers `/info` or `/v1/models` (retried as the endpoint backend retries requests)."""
    from .backends.dialects import detect
    from .backends.retry import RetryPolicy, classify

    r = recipe.rlrf
    for url in urls:
        try:
            detect(url, r.endpoint_dialect, RetryPolicy(r.endpoint_max_retries), min(r.endpoint_timeout, 30.0))
        except Exception as error:  # noqa: BLE001 - sorted by `classify`, which re-raises what it does not know
            failure = classify(error)
            raise RecipeError(
                f"{field}: {url} does not answer: {failure.message} (start the server, or fix the URL)"
            ) from None


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:300]
