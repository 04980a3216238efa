"""Walk a published artifact's `rlrf.parents` back to the prompts: adapter -> pairs -> feedback -> ... -> prompts.

Candidates sampled by an adapter (M_t, t > 0) also lead to that adapter, so the chain crosses iterations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import RepoCard, hf_hub_download


@dataclass
class Node:
    stage: str
    location: str
    revision: str | None
    iteration: int | None
    depth: int
    lineage: dict = field(default_factory=dict)


def artifact_file(location: str, revision: str | None, filename: str, endpoint: str | None = None) -> Path | None:
    """A file of a published folder, or of a Hub repo (dataset first, then model) at a revision; None if absent."""
    folder = Path(location)
    if folder.is_dir():
        path = folder / filename
        return path if path.is_file() else None
    for repo_type in ("dataset", "model"):
        try:
            return Path(hf_hub_download(location, filename, repo_type=repo_type, revision=revision, endpoint=endpoint))
        except Exception:  # noqa: BLE001 - the repo is of the other type, or lacks the file
            continue
    return None


def _card_lineage(location: str, revision: str | None, endpoint: str | None = None) -> dict:
    """The `rlrf` block of the card of a folder, or of a Hub repo (dataset first, then model) at a revision."""
    readme = artifact_file(location, revision, "README.md", endpoint)
    if readme is None:
        raise FileNotFoundError(f"no card found for {location}" + (f"@{revision}" if revision else ""))
    return RepoCard.load(readme).data.to_dict().get("rlrf") or {}


def walk(location: str, revision: str | None = None, endpoint: str | None = None) -> list[Node]:
    """Depth-first over parents; an artifact reached twice (a shared parent) is listed once."""
    nodes: list[Node] = []
    seen: set[tuple[str, str | None]] = set()
    stack = [(location, revision, 0)]
    while stack:
        where, rev, depth = stack.pop()
        if (where, rev) in seen:
            continue
        seen.add((where, rev))
        try:
            lineage = _card_lineage(where, rev, endpoint)
        except FileNotFoundError:
            if not depth:
                raise
            nodes.append(Node("(card not reachable)", where, rev, None, depth))
            continue
        stage = lineage.get("model_name") or lineage.get("stage", "?")
        nodes.append(Node(stage, where, rev, lineage.get("iteration"), depth, lineage))
        parents = [(p["location"], p.get("revision")) for p in lineage.get("parents") or []]
        policy = lineage.get("policy") or {}
        if lineage.get("stage") == "candidates" and policy.get("adapter"):
            parents.append((policy["adapter"], policy.get("adapter_revision")))
        stack.extend((where, rev, depth + 1) for where, rev in reversed(parents))
    return nodes


DATA_STAGES = ("candidates", "feedback", "refinements", "pairs")


def model_cost(location: str, revision: str | None, endpoint: str | None = None) -> dict | None:
    """What producing an adapter took: tokens its iteration's stages generated (policy and judge) and their wall
    time, from the stage cards, plus training's runtime from `training_metrics.json`; None when its card is out
    of reach. A stage resumed after a crash reports the wall time of its last attempt."""
    from .training import METRICS_FILE

    try:
        nodes = walk(location, revision, endpoint)
    except FileNotFoundError:
        return None
    iteration = nodes[0].iteration
    stages = [n.lineage for n in nodes[1:] if n.iteration == iteration and n.lineage.get("stage") in DATA_STAGES]
    if not stages:
        return None
    metrics_file = artifact_file(location, revision, METRICS_FILE, endpoint)
    metrics = json.loads(metrics_file.read_text()).get("metrics", {}) if metrics_file else {}
    return {
        "tokens_generated": sum(int(block.get("tokens_generated") or 0) for block in stages),
        "data_wall_time_s": round(sum(float(block.get("wall_time_s") or 0) for block in stages), 1),
        "train_wall_time_s": metrics.get("train_runtime"),
    }


def format_chain(nodes: list[Node]) -> str:
    lines = []
    for node in nodes:
        revision = f"@{node.revision[:12]}" if node.revision else ""
        iteration = "" if node.iteration is None else f" (iteration {node.iteration})"
        lines.append(f"{'  ' * node.depth}{node.stage}{iteration}: {node.location}{revision}")
    return "\n".join(lines)
