"""Compare what two runs published, byte for byte: the sha256 of every data file of every stage, and of the weights of
every adapter.

    python scripts/compare_runs.py OUTPUT_DIR_A OUTPUT_DIR_B

Each run is read from its `published.json`: a stage published to folders (`hub_endpoint: none`) is hashed from its
folder, one published to the offline Hub from the store its `hub.json` names (no server needed). Content keys are
compared too; on a Hub they differ between two runs from the second stage on even when nothing else does, since a
key covers its parents' commit ids and a commit id covers the commit's time. Prints one line per stage and exits
with status 1 when a data file differs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from rlrf_hub.hub.store import Store
from rlrf_hub.publishing import offline_store

COMPARED = {"dataset": "data/", "adapter": "adapter_model."}


def published_files(output_dir: Path) -> dict[str, dict]:
    """`{"<stage>/<iteration>": {"files": {path: sha256}, "content_key": key}}` for every published dataset and
    adapter (`adapter/M<t>`): the data files of a dataset, the weights of an adapter."""
    store = offline_store(output_dir)
    found = {}
    for entry in json.loads((output_dir / "published.json").read_text()):
        prefix = COMPARED.get(entry["kind"])
        if prefix is None:
            continue
        if store is None:
            folder = Path(entry["location"])
            paths = sorted(p for p in folder.rglob("*") if p.relative_to(folder).as_posix().startswith(prefix))
            files = {p.relative_to(folder).as_posix(): _sha256(p) for p in paths}
        else:
            repo_type = "dataset" if entry["kind"] == "dataset" else "model"
            tree = Store(store).commit_at(repo_type, entry["repo_id"], entry["revision"]).tree
            files = {path: file.sha256 for path, file in sorted(tree.items()) if path.startswith(prefix)}
        name = f"{entry['name']}/{entry['iteration']}" if entry["kind"] == "dataset" else f"adapter/{entry['name']}"
        found[name] = {"files": files, "content_key": entry["content_key"]}
    return found


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str]) -> int:
    a, b = (published_files(Path(arg)) for arg in argv)
    differ = False
    for name in sorted(set(a) | set(b)):
        left, right = a.get(name), b.get(name)
        same = left is not None and right is not None and left["files"] == right["files"]
        keys = "same key" if left and right and left["content_key"] == right["content_key"] else "other key"
        digests = ", ".join(sorted((left or right)["files"].values()))
        print(f"{name:16} {'identical' if same else 'DIFFERENT'}  {keys:9}  {digests}")
        differ |= not same
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
