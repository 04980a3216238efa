"""Walk a published artifact's `rlrf.parents` back to the prompts: adapter -> pairs -> feedback -> ... -> prompts.

Candidates sampled by an adapter (M_t, t > 0) also lead to that adapter, so the chain crosses iterations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import RepoCard, hf_hub_download


@dataclass
class Node:
    stage: str
    location: str
    revision: str | None
    iteration: int | None
    depth: int


def _card_lineage(location: str, revision: str | None) -> dict:
    """The `rlrf` block of the card of a folder, or of a Hub repo (dataset first, then model) at a revision."""
    folder = Path(location)
    if folder.is_dir():
        readme = folder / "README.md"
    else:
        readme = None
        for repo_type in ("dataset", "model"):
            try:
                readme = hf_hub_download(location, "README.md", repo_type=repo_type, revision=revision)
                break
            except Exception:  # noqa: BLE001 - the repo is of the other type, or has no card
                continue
    if readme is None or not Path(readme).is_file():
        raise FileNotFoundError(f"no card found for {location}" + (f"@{revision}" if revision else ""))
    return RepoCard.load(readme).data.to_dict().get("rlrf") or {}


def walk(location: str, revision: str | None = None) -> list[Node]:
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
            lineage = _card_lineage(where, rev)
        except FileNotFoundError:
            if not depth:
                raise
            nodes.append(Node("(card not reachable)", where, rev, None, depth))
            continue
        stage = lineage.get("model_name") or lineage.get("stage", "?")
        nodes.append(Node(stage, where, rev, lineage.get("iteration"), depth))
        parents = [(p["location"], p.get("revision")) for p in lineage.get("parents") or []]
        policy = lineage.get("policy") or {}
        if lineage.get("stage") == "candidates" and policy.get("adapter"):
            parents.append((policy["adapter"], policy.get("adapter_revision")))
        stack.extend((where, rev, depth + 1) for where, rev in reversed(parents))
    return nodes


def format_chain(nodes: list[Node]) -> str:
    lines = []
    for node in nodes:
        revision = f"@{node.revision[:12]}" if node.revision else ""
        iteration = "" if node.iteration is None else f" (iteration {node.iteration})"
        lines.append(f"{'  ' * node.depth}{node.stage}{iteration}: {node.location}{revision}")
    return "\n".join(lines)
