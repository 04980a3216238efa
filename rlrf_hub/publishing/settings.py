"""Which publisher a run gets: a Hub, the offline Hub (started for the run when none is running), or folders."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..models import cache_dir
from .base import OFFLINE_STORE_FILE, Publisher
from .folder import FolderPublisher

OFFLINE_NAMESPACE = "local"


@dataclass(frozen=True)
class PublishSettings:
    """The recipe's publishing keys (see `rlrf_hub.config.RLRFArguments`) and the run's name and folder."""

    run_name: str
    output_dir: Path
    hub_namespace: str | None = None
    hub_endpoint: str | None = None
    hub_store: str | None = None
    hub_max_retries: int = 5
    checkpoint_push_interval: float = 60.0


def make_publisher(settings: PublishSettings) -> Publisher:
    """The Hub the recipe names, the offline Hub when it names none, or plain folders for `hub_endpoint: none`."""
    endpoint = settings.hub_endpoint
    if endpoint == "none":
        return FolderPublisher(settings.output_dir)
    from ..backends.retry import RetryPolicy
    from .hub import HubPublisher

    namespace = settings.hub_namespace
    if endpoint == "offline" or (endpoint is None and not namespace):
        store = Path(settings.hub_store) if settings.hub_store else cache_dir() / "hub"
        endpoint = offline_hub(store)
        namespace = namespace or OFFLINE_NAMESPACE
        settings.output_dir.mkdir(parents=True, exist_ok=True)
        (settings.output_dir / OFFLINE_STORE_FILE).write_text(json.dumps({"store": str(store.resolve())}) + "\n")
    return HubPublisher(
        namespace,
        settings.run_name,
        settings.output_dir,
        endpoint=endpoint,
        token=os.environ.get("HF_TOKEN"),
        checkpoint_interval=settings.checkpoint_push_interval,
        retry=RetryPolicy(max_retries=settings.hub_max_retries, base_delay=1.0, max_delay=30.0),
    )


def offline_hub(store: Path) -> str:
    """The URL of a `rlrf-hub hub serve` already running over `store`, or of a server started for this run."""
    from ..hub.server import running_server, serve

    url = running_server(store)
    if url:
        print(f"publishing to the offline Hub at {url} (store: {store})", flush=True)
        return url
    _, url = serve(store)
    print(
        f"publishing to an offline Hub started for this run at {url} (store: {store}); to read the results after "
        f"the run, serve the store with `rlrf-hub hub serve --root {store}` and set HF_ENDPOINT to its URL",
        flush=True,
    )
    return url
