"""When an HTTP generation request is sent again, and how long to wait first.

Retried: connection errors (refused, reset, closed mid-response), timeouts, 408, 429 (honouring
`Retry-After`), TGI's 424 (the model failed while generating) and every 5xx. Not retried: other 4xx, which
say that the request itself is wrong (TGI answers 422 for a prompt longer than the model's context, for
instance); sending it again would only fail again.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx2
from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError

CONNECTION = "connection"
TIMEOUT = "timeout"
RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
BAD_RESPONSE = "bad_response"
CLIENT_ERROR = "client_error"
RETRIED_STATUSES = frozenset({408, 424, 429})


class BadReplyError(ValueError):
    """A 2xx reply whose body is not the JSON the dialect expects (cut short, or not JSON at all)."""


@dataclass(frozen=True)
class Failure:
    """What went wrong with one attempt, in the terms the retry policy and the stats use."""

    reason: str
    retryable: bool
    message: str
    status: int | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt `a` (0-based) waits `base_delay * 2**a`, capped at `max_delay`,
    scaled by a random factor in `[1 - jitter, 1 + jitter]`; a server's `Retry-After` is a floor (itself capped
    at `max_delay`). A request is sent at most `max_retries + 1` times."""

    max_retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("retry delays must be >= 0")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        backoff = min(self.max_delay, self.base_delay * 2**attempt)
        backoff *= 1 + self.jitter * (2 * (rng or random).random() - 1)
        if retry_after is not None:
            backoff = max(backoff, min(retry_after, self.max_delay))
        return backoff

    async def sleep(self, attempt: int, failure: Failure, rng: random.Random | None = None) -> None:
        await asyncio.sleep(self.delay(attempt, failure.retry_after, rng))


def classify(error: BaseException) -> Failure:
    """Sort an exception raised while sending a request into a retry reason."""
    response_error = _find(error, HfHubHTTPError)
    if isinstance(error, (InferenceTimeoutError, httpx2.TimeoutException, asyncio.TimeoutError)) or _find(
        error, httpx2.TimeoutException
    ):
        return Failure(TIMEOUT, True, f"timed out ({type(error).__name__})")
    if response_error is not None and response_error.response is not None:
        return _http_failure(response_error.response)
    if isinstance(error, (httpx2.TransportError, ConnectionError)) or _find(error, httpx2.TransportError):
        return Failure(CONNECTION, True, f"{type(error).__name__}: {error}".strip())
    if isinstance(error, BadReplyError):
        return Failure(BAD_RESPONSE, True, str(error))
    if isinstance(error, OSError):
        return Failure(CONNECTION, True, f"{type(error).__name__}: {error}")
    raise error


def _http_failure(response) -> Failure:
    status = response.status_code
    message = f"HTTP {status}: {_body(response)}"
    if status == 429:
        return Failure(RATE_LIMITED, True, message, status, parse_retry_after(response.headers.get("retry-after")))
    if status >= 500 or status in RETRIED_STATUSES:
        return Failure(SERVER_ERROR, True, message, status, parse_retry_after(response.headers.get("retry-after")))
    return Failure(CLIENT_ERROR, False, message, status)


def _body(response, limit: int = 300) -> str:
    try:
        text = response.text
    except Exception:  # a streamed or already closed body
        return "(no body)"
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (a number of seconds or an HTTP date); `None` if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import datetime, timezone

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


def _find(error: BaseException, kind: type) -> BaseException | None:
    """`error` or the first exception it was raised from that is a `kind`."""
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
