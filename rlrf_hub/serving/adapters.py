"""LoRA adapters the server holds, by the name clients pass as `adapter_id`.

An adapter is named by its spec as given, `REPO[@REV]` or a local folder; the bare repo id (without `@REV`) is an
alias of the first adapter loaded from that repo. Resolving an unknown name (finding the local folder, or downloading
the Hub snapshot through the configured HF endpoint) happens on the request's thread; attaching the weights to the
model happens on the generation thread, between batches, because it mutates modules the forward pass uses.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ValidationError

ADAPTER_CONFIG = "adapter_config.json"
HUB_ADAPTER_NAME = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")
MISS_TTL_S = 30.0


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    location: str
    revision: str | None = None


def parse_adapter_spec(spec: str) -> AdapterSpec:
    """`REPO@REV`, `REPO` or a local folder (a folder whose name holds `@` is taken whole)."""
    spec = spec.strip()
    if not spec:
        raise ValueError("an adapter spec must not be empty")
    if Path(spec).is_dir() or "@" not in spec:
        return AdapterSpec(spec, spec, None)
    location, _, revision = spec.rpartition("@")
    if not location or not revision:
        raise ValueError(f"adapter spec {spec!r} must look like REPO@REVISION")
    return AdapterSpec(spec, location, revision)


def download_adapter(spec: AdapterSpec) -> Path:
    """The local folder holding the adapter: the folder itself, or the Hub snapshot (downloaded if needed)."""
    path = Path(spec.location)
    if path.is_dir():
        if spec.revision is not None:
            raise ValueError(f"{spec.location} is a local folder; it takes no @revision")
    else:
        from huggingface_hub import HfApi, snapshot_download

        try:
            # The file list first (one call, no retries): a repo without an adapter config is no adapter, and a base
            # model repo must not be downloaded.
            info = HfApi().model_info(spec.location, revision=spec.revision)
            if ADAPTER_CONFIG not in {sibling.rfilename for sibling in info.siblings or []}:
                raise ValueError(f"the Hub repo {spec.location} has no {ADAPTER_CONFIG}, so it is not a PEFT adapter")
            path = Path(snapshot_download(spec.location, revision=info.sha or spec.revision))
        except Exception as err:  # any Hub failure (not found, bad id, no network) means: cannot resolve
            raise ValueError(f"not a local folder, and the Hub has no such adapter: {err}".splitlines()[0]) from None
    if not (path / ADAPTER_CONFIG).is_file():
        raise ValueError(f"{path} has no {ADAPTER_CONFIG}, so it is not a PEFT adapter")
    return path


class AdapterRegistry:
    """Names -> internal PEFT adapter names, plus the adapters resolved but not yet attached to the model."""

    def __init__(self):
        self._lock = threading.Lock()
        self._loaded: dict[str, str] = {}
        self._pending: dict[str, Path] = {}
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
        """Make `name` usable: a 422 when it is neither loaded nor resolvable. Returns the canonical name."""
        with self._lock:
            if name in self._loaded or name in self._pending:
                return name
            resolving = self._resolving.setdefault(name, threading.Lock())
        with resolving:
            if self.is_known(name):
                return name
            try:
                spec = parse_adapter_spec(name)
                path = download_adapter(spec)
            except ValueError as err:
                raise ValidationError(f"unknown `adapter_id` {name!r}: {err}") from None
            with self._lock:
                self._pending[name] = path
            return name

    def try_resolve(self, name: str) -> str | None:
        """For a chat `model` field, which OpenAI clients fill with any model name: the adapter it names, or None.

        A local folder must be an adapter (else 422); an `owner/name[@rev]` that the Hub cannot resolve as an adapter
        means the base model, and that answer is remembered for a while so such clients cost no Hub call per request.
        """
        if self.is_known(name):
            return name
        if Path(name).is_dir():
            return self.resolve(name)
        if not HUB_ADAPTER_NAME.match(name):
            return None
        with self._lock:
            missed = self._misses.get(name)
        if missed is not None and time.monotonic() - missed < MISS_TTL_S:
            return None
        try:
            return self.resolve(name)
        except ValidationError:
            with self._lock:
                self._misses[name] = time.monotonic()
            return None

    def take_pending(self, name: str) -> Path | None:
        with self._lock:
            return self._pending.get(name)

    def mark_loaded(self, name: str, internal: str) -> None:
        with self._lock:
            self._pending.pop(name, None)
            self._loaded[name] = internal
            bare = parse_adapter_spec(name).location
            self._loaded.setdefault(bare, internal)

    def drop_pending(self, name: str) -> None:
        with self._lock:
            self._pending.pop(name, None)
