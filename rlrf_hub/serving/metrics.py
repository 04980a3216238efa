"""Prometheus metrics in the text exposition format, named after TGI's where a TGI metric means the same thing."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

LabelKey = tuple[tuple[str, str], ...]

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384)
SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)


def _labels(key: LabelKey, extra: tuple[str, str] | None = None) -> str:
    pairs = list(key) + ([extra] if extra else [])
    if not pairs:
        return ""
    inner = ",".join(f'{name}="{value}"' for name, value in pairs)
    return "{" + inner + "}"


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, lock: threading.Lock):
        self.name = name
        self.help_text = help_text
        self._lock = lock

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, lock: threading.Lock):
        super().__init__(name, help_text, lock)
        self.values: dict[LabelKey, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self.values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> list[str]:
        values = self.values or {(): 0.0}
        return self.header() + [f"{self.name}{_labels(key)} {_number(value)}" for key, value in sorted(values.items())]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self.values[tuple(sorted(labels.items()))] = float(value)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, lock: threading.Lock, buckets: Sequence[float]):
        super().__init__(name, help_text, lock)
        self.buckets = tuple(buckets) + (math.inf,)
        self.series: dict[LabelKey, list[float]] = {}  # bucket counts..., sum, count

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self.series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += value
            series[-1] += 1

    def render(self) -> list[str]:
        lines = self.header()
        for key, series in sorted(self.series.items()):
            for bound, count in zip(self.buckets, series, strict=False):
                lines.append(f"{self.name}_bucket{_labels(key, ('le', _number(bound)))} {_number(count)}")
            lines.append(f"{self.name}_sum{_labels(key)} {_number(series[-2])}")
            lines.append(f"{self.name}_count{_labels(key)} {_number(series[-1])}")
        return lines


class ServerMetrics:
    """Every metric the server exports."""

    def __init__(self):
        self._lock = threading.Lock()
        lock = self._lock
        self.request_count = Counter("tgi_request_count", "Generation requests received.", lock)
        self.request_success = Counter("tgi_request_success", "Generation requests that succeeded.", lock)
        self.request_failure = Counter("tgi_request_failure", "Generation requests that failed, by error type.", lock)
        self.queue_size = Gauge("tgi_queue_size", "Requests waiting to join a batch.", lock)
        self.batch_current_size = Gauge("tgi_batch_current_size", "Rows in the running batch.", lock)
        self.batch_next_size = Histogram(
            "tgi_batch_next_size", "Rows prefilled together into the running batch.", lock, SIZE_BUCKETS
        )
        self.batch_decode_size = Histogram(
            "tgi_batch_decode_size", "Rows decoded together in one forward pass.", lock, SIZE_BUCKETS
        )
        self.batch_inference_count = Counter("tgi_batch_inference_count", "Forward passes, by method.", lock)
        self.batch_forward_duration = Histogram(
            "tgi_batch_forward_duration",
            "Seconds per forward pass and token choice.",
            lock,
            SECONDS_BUCKETS,
        )
        self.generated_tokens = Counter("tgi_generated_tokens_total", "Tokens generated, all requests.", lock)
        self.request_generated_tokens = Histogram(
            "tgi_request_generated_tokens", "Tokens generated per request.", lock, TOKEN_BUCKETS
        )
        self.request_input_length = Histogram(
            "tgi_request_input_length", "Prompt tokens per request.", lock, TOKEN_BUCKETS
        )
        self.request_queue_duration = Histogram(
            "tgi_request_queue_duration", "Seconds a request waited before its prefill.", lock, SECONDS_BUCKETS
        )
        self.request_duration = Histogram(
            "tgi_request_duration", "Seconds from arrival to the last token.", lock, SECONDS_BUCKETS
        )

    def render(self) -> str:
        with self._lock:
            lines = []
            for metric in vars(self).values():
                if isinstance(metric, _Metric):
                    lines.extend(metric.render())
        return "\n".join(lines) + "\n"
