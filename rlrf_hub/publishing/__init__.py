"""Where the artifacts of a run go, behind one interface (`Publisher`); stages never know which one they got.

`FolderPublisher` (`folder`) lays each stage out as a Hub dataset repo under `output_dir`; `HubPublisher` (`hub`)
pushes the same layout to a Hub as tagged commits. Unfinished stages are checkpointed (`checkpoints`), and
evaluation results go on the adapter cards (`results`).
"""

from .base import OFFLINE_STORE_FILE, CheckpointMirror, Published, Publisher, offline_store
from .checkpoints import HubCheckpointMirror, StageCheckpoint
from .folder import FolderPublisher
from .settings import PublishSettings, make_publisher

__all__ = [
    "OFFLINE_STORE_FILE",
    "CheckpointMirror",
    "FolderPublisher",
    "HubCheckpointMirror",
    "PublishSettings",
    "Published",
    "Publisher",
    "StageCheckpoint",
    "make_publisher",
    "offline_store",
]
