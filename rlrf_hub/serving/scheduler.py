"""Dynamic (continuous) batching: one thread owns the model and keeps a batch running.

When nothing runs, the scheduler takes the oldest waiting job and, within a short window, every waiting job with
the same adapter that fits in `max_batch_size` rows; they are prefilled together. While a batch runs, jobs with the
batch's adapter join it between decode steps (prefilled, then merged into the running cache). A job for another
adapter stops the admissions: the running batch drains, and the next batch serves the oldest job's adapter, so no
adapter waits behind a stream of requests for another.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import torch

from .adapters import AdapterRegistry, unknown_adapter
from .engine import Batch, Engine, Sequence, merge
from .errors import GenerationError, OverloadedError, ServingError, ValidationError
from .metrics import ServerMetrics
from .protocol import SequenceResult, TokenInfo

logger = logging.getLogger(__name__)


@dataclass
class TokenEvent:
    index: int
    token: TokenInfo
    result: SequenceResult | None


@dataclass
class ErrorEvent:
    error: ServingError


class Job:
    """One HTTP request's rows; the request's thread reads its events while the scheduler produces them."""

    def __init__(self, sequences: list[Sequence], adapter: str | None, metrics: ServerMetrics):
        self.sequences = sequences
        self.adapter = adapter
        self.metrics = metrics
        self.events: queue.Queue[TokenEvent | ErrorEvent] = queue.Queue()
        self.cancelled = False
        self.created = time.monotonic()
        self.remaining = len(sequences)
        for sequence in sequences:
            sequence.sink = self

    @property
    def rows(self) -> int:
        return len(self.sequences)

    def on_token(self, index: int, token: TokenInfo, result: SequenceResult | None) -> None:
        self.events.put(TokenEvent(index, token, result))
        if result is not None:
            self.remaining -= 1
            self.metrics.generated_tokens.inc(result.generated_tokens)
            self.metrics.request_generated_tokens.observe(result.generated_tokens)
            if self.remaining == 0:
                self.metrics.request_duration.observe(time.monotonic() - self.created)

    def fail(self, error: ServingError) -> None:
        self.cancelled = True
        self.events.put(ErrorEvent(error))


@dataclass
class SchedulerConfig:
    max_batch_size: int = 16
    max_queue: int = 128
    batch_window_s: float = 0.005
    torch_threads: int | None = None


class Scheduler:
    def __init__(self, engine: Engine, adapters: AdapterRegistry, metrics: ServerMetrics, config: SchedulerConfig):
        self.engine = engine
        self.adapters = adapters
        self.metrics = metrics
        self.config = config
        self._waiting: deque[Job] = deque()
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="rlrf-hub-serve-scheduler", daemon=True)
        self._adapter_count = 0
        self.running_rows = 0

    # Public -----------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queue_size(self) -> int:
        with self._condition:
            return len(self._waiting)

    def submit(self, job: Job) -> None:
        """Queue a job, or raise `OverloadedError` (429) when `max_queue` jobs already wait."""
        with self._condition:
            if self._stopping:
                raise GenerationError("the server is shutting down")
            if len(self._waiting) >= self.config.max_queue:
                raise OverloadedError()
            self._waiting.append(job)
            self.metrics.queue_size.set(len(self._waiting))
            self._condition.notify_all()

    # Admission --------------------------------------------------------------------------------------------------
    def _take(self, adapter: str | None, free_rows: int) -> list[Job]:
        """Jobs for `adapter` from the head of the queue, in order, while they fit (lock held)."""
        taken = []
        while self._waiting and self._waiting[0].adapter == adapter and self._waiting[0].rows <= free_rows:
            job = self._waiting.popleft()
            if job.cancelled:
                continue
            taken.append(job)
            free_rows -= job.rows
        self.metrics.queue_size.set(len(self._waiting))
        return taken

    def _admit_first(self) -> list[Job]:
        """Block until a job waits; then gather, within the batch window, the jobs that can share its batch."""
        with self._condition:
            while not self._waiting and not self._stopping:
                self._condition.wait()
            if self._stopping:
                return []
            adapter = self._waiting[0].adapter
            taken = self._take(adapter, self.config.max_batch_size)
            deadline = time.monotonic() + self.config.batch_window_s
            while sum(job.rows for job in taken) < self.config.max_batch_size and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
                taken += self._take(adapter, self.config.max_batch_size - sum(job.rows for job in taken))
            return taken

    def _admit_joining(self, batch: Batch) -> list[Job]:
        if not batch.mergeable:
            return []
        with self._condition:
            return self._take(batch.adapter, self.config.max_batch_size - len(batch))

    # Generation -------------------------------------------------------------------------------------------------
    def _ensure_adapter(self, name: str | None) -> str | None:
        if name is None:
            return None
        internal = self.adapters.internal_name(name)
        if internal is not None:
            return internal
        path = self.adapters.take_pending(name)
        if path is None:
            raise unknown_adapter(name)
        self._adapter_count += 1
        internal = f"adapter_{self._adapter_count}"
        try:
            self.engine.attach_adapter(str(path), internal)
        except Exception as err:
            logger.warning("adapter %r cannot be loaded onto this model: %s", name, err)
            self.adapters.drop_pending(name)
            raise ValidationError(
                f"adapter {name!r} cannot be loaded onto this model ({type(err).__name__}; see the server log)"
            ) from err
        self.adapters.mark_loaded(name, internal)
        return internal

    def _prefill(self, jobs: list[Job], running: Batch | None) -> Batch | None:
        adapter = jobs[0].adapter
        try:
            internal = self._ensure_adapter(adapter)
        except ServingError as err:
            for job in jobs:
                job.fail(err)
            return running
        now = time.monotonic()
        sequences = []
        for job in jobs:
            self.metrics.request_queue_duration.observe(now - job.created)
            sequences.extend(job.sequences)
        self.metrics.batch_next_size.observe(len(sequences))
        started = time.perf_counter()
        try:
            joining = self.engine.prefill(sequences, internal)
        except Exception as err:
            logger.exception("prefill failed")
            for job in jobs:
                job.fail(GenerationError(f"Request failed during generation: {err}"))
            return running
        self._observe_forward("prefill", started)
        if joining is None:
            return running
        if running is None:
            return joining
        return merge(running, joining)

    def _observe_forward(self, method: str, started: float) -> None:
        self.metrics.batch_inference_count.inc(method=method)
        self.metrics.batch_forward_duration.observe(time.perf_counter() - started, method=method)

    def _step(self, batch: Batch | None) -> Batch | None:
        jobs = self._admit_first() if batch is None else self._admit_joining(batch)
        if jobs:
            batch = self._prefill(jobs, batch)
        if batch is not None:
            self.metrics.batch_decode_size.observe(len(batch))
            started = time.perf_counter()
            batch = self.engine.decode(batch)
            self._observe_forward("decode", started)
        self.running_rows = len(batch) if batch is not None else 0
        self.metrics.batch_current_size.set(self.running_rows)
        return batch

    def _run(self) -> None:
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)  # per thread with OpenMP: the process keeps its own
        batch: Batch | None = None
        while not self._stopping:
            try:
                batch = self._step(batch)
            except Exception as err:
                logger.exception("generation failed")
                failed = {id(s.sink): s.sink for s in (batch.sequences if batch is not None else [])}
                for job in failed.values():
                    job.fail(GenerationError(f"Request failed during generation: {err}"))
                batch = None
        with self._condition:
            waiting, self._waiting = list(self._waiting), deque()
        for job in waiting + ([s.sink for s in batch.sequences] if batch is not None else []):
            job.fail(GenerationError("the server is shutting down"))
