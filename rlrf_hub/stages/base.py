"""What the stages of an iteration share: the stage interface, the iteration's context, content keys, lineage and
the publishing of a stage's rows.

A stage is a module with `NAME` (its dataset, or `adapter`), `PARENTS` (the stages whose published revisions its
content key covers), `key_inputs(ctx)` (the settings its output depends on), `run(ctx, key)` (make and publish
it), `load(ctx, found)` (read a published one back) and, for a dataset, `CARD_DESCRIPTION` (its card's section).
A stage that does not apply to an iteration (`applies(ctx)` is false) is skipped.

Content keys. A run started again, on this machine or on a fresh one with empty caches, computes each stage's key
from the settings and the commits of the stage's parents, and reuses what is published under the stage's tag only
when the keys agree. Settings that change how the work is done but not what it is (batch sizes, backends, endpoints,
folders) are left out, so moving the judge behind an endpoint does not invalidate a run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..aspects import rubric_sha256
from ..errors import RunError
from ..feedback.templates import TEMPLATES_SHA256
from ..publishing import Published, Publisher, StageCheckpoint
from ..sharding import sum_stats, wait_for_shares, wait_published
from .backends import Backends
from .settings import RunSettings

KEY_FILE = ".content-key"


class Stage(Protocol):
    """The interface of a stage module (see the module docstring)."""

    NAME: str
    PARENTS: tuple[str, ...]

    def applies(self, ctx: IterationContext) -> bool: ...
    def key_inputs(self, ctx: IterationContext) -> dict: ...
    def find(self, ctx: IterationContext) -> Published | None: ...
    def load(self, ctx: IterationContext, found: Published) -> Any: ...
    def run(self, ctx: IterationContext, key: str) -> tuple[Any, Published | None]: ...


@dataclass
class IterationContext:
    """One pass of the loop with the policy M_t: its settings, publisher, prompts and what its stages made so far."""

    settings: RunSettings
    publisher: Publisher
    prompts: list[dict]
    t: int
    policy_adapter: Published | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    published: dict[str, Published | None] = field(default_factory=dict)
    judge_stats: dict = field(default_factory=dict)
    aspect_map: dict[str, list[str]] | None = None

    def __post_init__(self) -> None:
        self.by_id = {row["prompt_id"]: row for row in self.prompts}
        self.shard = self.settings.shard
        self.rule = self.settings.pairing.rule_for(self.t)
        self.work = self.settings.output_dir / f"iter-{self.t}" / ".work"
        self.adapter_path = str(self.publisher.adapter_dir(self.t)) if self.policy_adapter else None
        self.backends = Backends(self.settings, self.adapter_path)
        self._checkpoints: dict[tuple[str, str], StageCheckpoint] = {}

    def clear_work(self) -> None:
        """The iteration is complete: its checkpoints' local folders are no longer needed."""
        shutil.rmtree(self.work, ignore_errors=True)

    def wait_published(self, what: str, find: Callable[[], Published | None]) -> Published | None:
        """`find()`, for a worker other than 0 once worker 0 has published `what` of this iteration."""
        return wait_published(find, f"{what} of iteration {self.t}", self.shard, self.settings.shard_wait_timeout)

    def wait_for_shares(self, checkpoint: StageCheckpoint, step: str, what: str) -> dict[str, dict]:
        return wait_for_shares(checkpoint, step, what, self.shard, self.settings.shard_wait_timeout)

    def key(self, stage: str, parents: Sequence[str], inputs: dict) -> str:
        """The content key of this iteration's `stage`. `parents` name the stages it is made from, and `policy`
        the adapter of M_t, a parent of everything the policy samples."""
        revisions = []
        for parent in parents:
            found = self.policy_adapter if parent == "policy" else self.published.get(parent)
            revisions.append(found.revision if found else None)
        return content_key(stage, inputs, revisions)

    def policy_inputs(self) -> dict:
        """The content-key inputs of whatever the policy M_t samples."""
        p = self.settings.policy
        return {"model": p.model, "revision": p.revision, "seed": p.seed, "iteration": self.t}

    def lineage(self, stage: str, rows: list[dict], parents: list[Published], started: float, **extra) -> dict:
        """The `rlrf:` block of a card: what made the artifact, from what, and what it cost."""
        s, adapter, f = self.settings, self.policy_adapter, self.settings.feedback
        r, sampling = s.reward, s.sampling
        return {
            "run": s.run_name,
            "stage": stage,
            "iteration": self.t,
            "policy": {
                "model": s.policy.model,
                "revision": s.policy.revision,
                "adapter": adapter.location if adapter else None,
                "adapter_revision": adapter.revision if adapter else None,
            },
            "feedback_model": {
                "model": f.feedback_model,
                "revision": f.feedback_revision,
                "backend": s.judge.backend,
                "aspect_mode": f.aspect_mode,
                "verifier_tasks": list(f.verifier_tasks),
            },
            "reward_model": {"model": r.reward_model, "revision": r.reward_revision} if r.reward_model else None,
            "rubric_sha256": rubric_sha256(),
            "templates_sha256": TEMPLATES_SHA256,
            "sampling": {
                "num_candidates": sampling.num_candidates,
                "num_refinements": sampling.num_refinements,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "max_new_tokens": sampling.max_new_tokens,
                "seed": s.policy.seed,
            },
            "parents": [{"stage": p.name, "location": p.location, "revision": p.revision} for p in parents],
            "counts": {"rows": len(rows), **extra.pop("counts", {})},
            "tokens_generated": sum(row.get("num_tokens", 0) for row in rows),
            "wall_time_s": round(time.time() - started, 1),
            **extra,
        }

    def checkpoint(self, stage: str, key: str) -> StageCheckpoint:
        """The stage's unfinished work for the inputs with content key `key`, here and on the Hub (one object per
        stage and key, so that the refinements and feedback stages share the feedback checkpoint)."""
        if (stage, key) not in self._checkpoints:
            self._checkpoints[(stage, key)] = self._open_checkpoint(stage, key)
        return self._checkpoints[(stage, key)]

    def _open_checkpoint(self, stage: str, key: str) -> StageCheckpoint:
        mirror = self.publisher.checkpoint_mirror(stage, self.t, key)
        if self.shard.sharded and mirror is None:
            raise RunError(f"shard: the workers of a sharded run meet on a Hub; {self.publisher!r} is not one")
        folder = self.work / stage
        _drop_other_inputs(folder, key)
        return StageCheckpoint(folder, stage, mirror, self.shard)


def content_key(stage: str, settings: dict, parents: Sequence[str | None]) -> str:
    """sha256 over the stage, its settings and its parents' revisions (commit shas on a Hub)."""
    payload = {"stage": stage, "settings": settings, "parents": list(parents)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def reusable(publisher: Publisher, found: Published | None, key: str) -> bool:
    """Whether a published artifact was made from the inputs with content key `key` (then this run records it in
    its `published.json` too); an error if it was not: published results are never replaced."""
    if found is None:
        return False
    if found.content_key == key:
        publisher.record(found)
        return True
    raise RunError(
        f"{found.location} (iteration {found.iteration}, revision {found.revision}) was made from other inputs than "
        f"this recipe gives (content key {found.content_key or 'missing'}, expected {key}). Published results are "
        "never replaced: set another run_name to start a new run, or restore the recipe that made it."
    )


def publish_rows(
    ctx: IterationContext,
    stage: str,
    description: str,
    checkpoint: StageCheckpoint,
    expected: list[str],
    key: str,
    lineage: Callable[[list[dict], dict], dict],
) -> tuple[list[dict], Published]:
    """Publish a stage whose rows are all checkpointed, one row per `expected` response id in that order.

    Sharded, each worker marks its share done; worker 0 waits for every share, merges and publishes (the card
    counts the rows of each worker), the others wait for its tag and read the stage back.
    `lineage(rows, stats)` makes the card's lineage; `stats` sums the judge statistics of all workers.
    """
    shard, stats = ctx.shard, ctx.judge_stats
    if shard.sharded:
        own = checkpoint.own_rows()
        checkpoint.mark_done(stage, {"rows": own, "stats": ctx.judge_stats})
        print(f"shard {shard}: done with my share of {stage} of iteration {ctx.t}: {own} rows", flush=True)
        if not shard.merger:
            found = ctx.wait_published(stage, lambda: ctx.publisher.find(stage, ctx.t))
            reusable(ctx.publisher, found, key)
            checkpoint.clear(local_only=True)
            return list(ctx.publisher.load(stage, ctx.t)), found
        markers = ctx.wait_for_shares(checkpoint, stage, f"share of {stage} of iteration {ctx.t}")
        stats = sum_stats(marker["stats"] for marker in markers.values())
    rows = _complete(checkpoint.rows(), expected, stage, ctx.t)
    info = {**lineage(rows, stats), "content_key": key}
    if shard.sharded:
        info["shards"] = {"count": shard.count, "rows": {tag: m["rows"] for tag, m in markers.items()}}
        print(f"shard {shard}: merged {stage} of iteration {ctx.t}: {info['shards']['rows']}", flush=True)
    published = ctx.publisher.publish_dataset(stage, ctx.t, rows, info, description)
    checkpoint.clear()
    return rows, published


def _complete(rows: list[dict], expected: list[str], stage: str, t: int) -> list[dict]:
    """One row per expected response id, in the order an unsharded, uninterrupted run gives."""
    by_id: dict[str, dict] = {}
    for row in rows:
        by_id.setdefault(row["response_id"], row)
    missing = [rid for rid in expected if rid not in by_id]
    if missing:
        raise RunError(
            f"{stage} of iteration {t} lacks {len(missing)} of {len(expected)} rows (for example "
            f"{missing[0]}) although every share of it is marked done. The workers of a sharded run must run the "
            "same recipe: sizes such as generation_batch_size and feedback_batch_size decide who does what."
        )
    return [by_id[rid] for rid in expected]


def _drop_other_inputs(folder: Path, key: str) -> None:
    """Keep `folder`'s checkpoint parts only if they were made from the inputs with content key `key`: an edited
    recipe must not resume from the parts of the old one. No other run can be using them (the output_dir lock)."""
    marker = folder / KEY_FILE
    if marker.is_file() and marker.read_text().strip() != key:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(key + "\n")
