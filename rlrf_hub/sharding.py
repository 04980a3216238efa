"""Several workers sharing an iteration's generation (`rlrf-hub run --shard i/N`); see `rlrf_hub.loop` for the
protocol. This module holds what the stages need to agree on: who does which chunk, and how long to wait."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

FIRST_POLL_S = 1.0
LONGEST_POLL_S = 30.0
REPORT_EVERY_S = 60.0


class ShardTimeoutError(RuntimeError):
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
