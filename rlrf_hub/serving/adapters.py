"""LoRA adapters the server holds, by the name clients pass as `adapter_id` (chat: `model`).

Where adapters come from is fixed when the server starts. The `--adapter` specs, local folders or Hub repos
(`REPO[@REV]`), are loaded before the first request; a request may add only Hub adapters, named `owner/name[@rev]`
and resolved through the configured HF endpoint (`HF_ENDPOINT`, e.g. the offline Hub). The name a request sends is
never looked up on the server's disk: a path, whether a folder with an adapter, any other folder or nothing at all,
gets the same "unknown adapter" answer as any other name, so a client can neither load the server's files nor
learn which exist. Why a Hub lookup failed goes to the server's log, not to the client.

A name is the spec as given; the bare repo id (without `@REV`) is an alias of the first adapter loaded from that
repo. The Hub download happens on the request's thread; attaching the weights to the model happens on the
generation thread, between batches, because it mutates modules the forward pass uses.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ValidationError

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = [ADAPTER_CONFIG, "adapter_model.safetensors", "adapter_model.bin"]
HUB_REVISION = re.compile(r"^[\w.-]+(/[\w.-]+)*$")
MAX_REVISION_CHARS = 256
MISS_TTL_S = 30.0
MAX_MISSES = 1024
SHOWN_NAME_CHARS = 200


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    location: str
    revision: str | None = None


def parse_adapter_spec(spec: str) -> AdapterSpec:
    """A spec given at start: `REPO@REV`, `REPO` or a local folder (a folder whose name holds `@` is taken whole)."""
    spec = spec.strip()
    if not spec:
        raise ValueError("an adapter spec must not be empty")
    if Path(spec).is_dir() or "@" not in spec:
        return AdapterSpec(spec, spec, None)
    location, _, revision = spec.rpartition("@")
    if not location or not revision:
        raise ValueError(f"adapter spec {spec!r} must look like REPO@REVISION")
    return AdapterSpec(spec, location, revision)


def hub_adapter_spec(name: str) -> AdapterSpec | None:
    """The Hub adapter a request's name denotes, `owner/name[@revision]`, or None for anything else (paths
    included), decided from the text alone."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    location, at, revision = name.partition("@")
    if location.count("/") != 1 or (at and not _valid_revision(revision)):
        return None
    try:
        validate_repo_id(location)
    except HFValidationError:
        return None
    return AdapterSpec(name, location, revision or None)


def _valid_revision(revision: str) -> bool:
    return (
        len(revision) <= MAX_REVISION_CHARS
        and HUB_REVISION.match(revision) is not None
        and all(part not in (".", "..") for part in revision.split("/"))
    )


def hub_adapter(spec: AdapterSpec) -> Path:
    """The local snapshot of a Hub adapter, downloaded if needed (only the adapter's own files); `ValueError` when
    the Hub cannot give one."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        # The file list first (one call, no retries): a repo without an adapter config is no adapter, and a base
        # model repo must not be downloaded.
        info = HfApi().model_info(spec.location, revision=spec.revision)
        if ADAPTER_CONFIG not in {sibling.rfilename for sibling in info.siblings or []}:
            raise ValueError(f"the Hub repo {spec.location} has no {ADAPTER_CONFIG}, so it is not a PEFT adapter")
        path = Path(snapshot_download(spec.location, revision=info.sha or spec.revision, allow_patterns=ADAPTER_FILES))
    except Exception as err:  # any Hub failure (not found, bad id, no network) means: cannot resolve
        raise ValueError(f"the Hub has no such adapter: {err}".splitlines()[0]) from None
    return _checked(path)


def startup_adapter(spec: AdapterSpec) -> Path:
    """The folder of an adapter named at start: the local folder itself, or the Hub snapshot."""
    path = Path(spec.location)
    if not path.is_dir():
        return hub_adapter(spec)
    if spec.revision is not None:
        raise ValueError(f"{spec.location} is a local folder; it takes no @revision")
    return _checked(path)


def _checked(path: Path) -> Path:
    if not (path / ADAPTER_CONFIG).is_file():
        raise ValueError(f"{path} has no {ADAPTER_CONFIG}, so it is not a PEFT adapter")
    return path


def unknown_adapter(name: str) -> ValidationError:
    """The one answer for every name the server cannot serve, whatever the reason."""
    shown = name if len(name) <= SHOWN_NAME_CHARS else name[:SHOWN_NAME_CHARS] + "..."
    return ValidationError(
        f"unknown `adapter_id` {shown!r}: not an adapter this server was started with, nor a PEFT adapter on its "
        "Hub (`owner/name[@revision]`)"
    )


class AdapterRegistry:
    """Names -> internal PEFT adapter names, plus the adapters resolved but not yet attached to the model."""

    def __init__(self):
        self._lock = threading.Lock()
        self._loaded: dict[str, str] = {}
        self._pending: dict[str, tuple[Path, str | None]] = {}
        self._resolving: dict[str, threading.Lock] = {}
        self._misses: dict[str, float] = {}

    @property
    def names(self) -> list[str]:
        with self._lock:
            return sorted(set(self._loaded) | set(self._pending))

    def is_known(self, name: str) -> bool:
        with self._lock:
            return name in self._loaded or name in self._pending

    def internal_name(self, name: str) -> str | None:
        with self._lock:
            return self._loaded.get(name)

    def resolve(self, name: str) -> str:
        """Make `name` usable: a 422 when it is neither loaded nor a Hub adapter. Returns the canonical name."""
        if self.is_known(name):
            return name
        spec = hub_adapter_spec(name)
        if spec is None:
            raise unknown_adapter(name)
        with self._lock:
            resolving = self._resolving.setdefault(name, threading.Lock())
        try:
            with resolving:
                if self.is_known(name):
                    return name
                try:
                    path = hub_adapter(spec)
                except ValueError as err:
                    logger.info("adapter %r not loaded: %s", name[:SHOWN_NAME_CHARS], err)
                    raise unknown_adapter(name) from None
                with self._lock:
                    self._pending[name] = (path, spec.location)
                return name
        finally:
            with self._lock:
                self._resolving.pop(name, None)

    def try_resolve(self, name: str) -> str | None:
        """For a chat `model` field, which OpenAI clients fill with any model name: the adapter it names, or None
        (the base model) for a name that is no adapter the server holds or can fetch from the Hub.

        A Hub miss is remembered for a while, so such clients cost no Hub call per request.
        """
        if self.is_known(name):
            return name
        if hub_adapter_spec(name) is None or self._missed_recently(name):
            return None
        try:
            return self.resolve(name)
        except ValidationError:
            with self._lock:
                if len(self._misses) >= MAX_MISSES:
                    self._misses.clear()
                self._misses[name] = time.monotonic()
            return None

    def _missed_recently(self, name: str) -> bool:
        with self._lock:
            missed = self._misses.get(name)
        return missed is not None and time.monotonic() - missed < MISS_TTL_S

    def take_pending(self, name: str) -> Path | None:
        with self._lock:
            pending = self._pending.get(name)
        return None if pending is None else pending[0]

    def mark_loaded(self, name: str, internal: str, alias: str | None = None) -> None:
        """`name` is attached as `internal`; `alias` (the bare repo id) names it too unless it names another."""
        with self._lock:
            pending = self._pending.pop(name, None)
            self._loaded[name] = internal
            alias = alias or (pending[1] if pending else None)
            if alias:
                self._loaded.setdefault(alias, internal)

    def drop_pending(self, name: str) -> None:
        with self._lock:
            self._pending.pop(name, None)
