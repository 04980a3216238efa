"""Several workers sharing an iteration's generation (`rlrf-hub run --shard i/N`).

The N workers run the same recipe against the same Hub, each with its own `output_dir` and caches, on one machine or
several. The work of the candidates, feedback and refinements stages is cut into chunks exactly as an unsharded run
cuts it (sampling: `2 * generation_batch_size` sequences; judging and aspect selection: `4 * feedback_batch_size`
requests), from the whole list, and worker i does chunks i, i + N, i + 2N, ... Each chunk's batches and seeds come
from its content alone, so every row is the row an unsharded run makes (on the same hardware), and the merged stage
is published in the unsharded order, under the same content key. Chunks rather than prompts are dealt out because a
prompt-by-prompt split would regroup the batches and change the chunk seeds.

Workers push their parts (`part-s<i>of<N>-<k>.parquet`) to the stage's `checkpoints/iter-<t>-<key>` branch and, when
their share of a step is done, a marker `<step>-s<i>of<N>.done` with it (forced, whatever
`checkpoint_push_interval` says). Worker 0 waits for all N markers (at most `shard_wait_timeout` seconds), pulls
every part, checks that every expected row is there, publishes and tags the stage as an unsharded run would, and
deletes the branch; the other workers wait for the stage's `iter-<t>` tag and read it back. The feedback stage has
two meeting points inside it: the judge's aspect choices (`aspects-s<i>of<N>.json`), and the rating of the
candidates (`rated` markers), since the refinements of a prompt need the feedback on all its candidates. Worker 0
alone builds the pairs, trains and evaluates; the others wait for the pairs and the adapter's tag and go on to the
next iteration, sampling from the new adapter. A crashed worker restarted with the same command pulls back only its
own parts and continues its share.

This module holds what the workers agree on (who does which chunk) and where they meet (`wait_for_files`,
`wait_for_shares`, `wait_published`).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import RunError

T = TypeVar("T")

FIRST_POLL_S = 1.0
LONGEST_POLL_S = 30.0
REPORT_EVERY_S = 60.0


class ShardTimeoutError(RunError):
    """A worker waited `shard_wait_timeout` seconds for the others without seeing them finish."""


@dataclass(frozen=True)
class Shard:
    """Worker `index` of `count`. The default, 0 of 1, is an ordinary unsharded run."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        if text is None:
            return cls()
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if match is None:
            raise ValueError(f"must be `i/N`, this worker's index and the number of workers, got {text!r}")
        index, count = int(match[1]), int(match[2])
        if count < 1 or index >= count:
            raise ValueError(f"needs 0 <= i < N (workers are numbered from 0), got {text!r}")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def sharded(self) -> bool:
        return self.count > 1

    @property
    def merger(self) -> bool:
        """Worker 0 merges and publishes every stage, builds the pairs and trains."""
        return self.index == 0

    @property
    def tag(self) -> str:
        """How this worker's files are named: `part-s1of4-00003.parquet`, `feedback-s1of4.done`."""
        return f"s{self.index}of{self.count}"

    def workers(self) -> list[Shard]:
        return [Shard(i, self.count) for i in range(self.count)]

    def take(self, chunks: Sequence[T]) -> list[T]:
        """This worker's chunks: every `count`-th, starting at `index` (round robin keeps shares even)."""
        return list(chunks[self.index :: self.count])

    def owns(self, name: str) -> bool:
        """Whether a checkpoint file is this worker's (its name carries `tag` between `-` or `.`)."""
        return self.tag in re.split(r"[-.]", name)

    def marker(self, step: str) -> str:
        """The file saying this worker finished its share of `step`."""
        return f"{step}-{self.tag}.done"


def wait_until(ready: Callable[[], T | None], status: Callable[[], str], timeout: float, shard: Shard) -> T:
    """Poll `ready` (1 s, growing to 30 s between polls) until it returns something; print `status()` now and then.

    Raises `ShardTimeoutError` after `timeout` seconds.
    """
    start = time.monotonic()
    delay, reported = FIRST_POLL_S, float("-inf")
    while True:
        result = ready()
        if result:
            return result
        waited = time.monotonic() - start
        if waited >= timeout:
            raise ShardTimeoutError(
                f"shard {shard}: gave up after {waited:.0f} s (shard_wait_timeout) waiting for {status()}. Check that "
                "every worker `rlrf-hub run --shard i/N` runs with the same recipe and the same N, or raise "
                "shard_wait_timeout; restarting this worker with the same command continues where it stopped."
            )
        if waited - reported >= REPORT_EVERY_S:
            print(f"shard {shard}: waiting for {status()} ({waited:.0f} s so far)", flush=True)
            reported = waited
        time.sleep(min(delay, max(timeout - waited, 0.0)))
        delay = min(delay * 1.5, LONGEST_POLL_S)


def wait_for_files(checkpoint: Any, names: set[str], what: str, shard: Shard, timeout: float) -> None:
    """Wait until the checkpoint's mirror has every file of `names`, then pull every worker's files."""

    def missing() -> list[str]:
        return sorted(names - checkpoint.remote_names())

    wait_until(lambda: not missing(), lambda: f"the other workers' {what} (missing {missing()})", timeout, shard)
    checkpoint.pull_all()


def wait_for_shares(checkpoint: Any, step: str, what: str, shard: Shard, timeout: float) -> dict[str, dict]:
    """Wait until every worker marked `step` done on the mirror and pull all their files; their markers by tag."""
    wait_for_files(checkpoint, {s.marker(step) for s in shard.workers()}, what, shard, timeout)
    return checkpoint.markers(step)


def wait_published(find: Callable[[], T | None], what: str, shard: Shard, timeout: float) -> T | None:
    """What `find` returns once worker 0 has published it (at once for worker 0 and unsharded runs)."""
    found = find()
    if found is None and shard.sharded and not shard.merger:
        found = wait_until(find, lambda: f"worker 0 to publish {what}", timeout, shard)
    return found


def sum_stats(all_stats: Iterable[dict | None]) -> dict:
    """The judge statistics of several workers, added up."""
    total: Counter = Counter()
    for stats in all_stats:
        total.update({k: v for k, v in (stats or {}).items() if isinstance(v, (int, float))})
    return dict(total)
