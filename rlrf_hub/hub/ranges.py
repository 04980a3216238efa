"""The `Range` header of a download, by RFC 7233: one byte range (`bytes=a-b`, `bytes=a-` or `bytes=-n`).

A header this server does not understand (another unit, several ranges, bad syntax) is ignored and the whole file
is sent, as the RFC allows; a well-formed range that starts at or after the end of the file is not satisfiable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")


class RangeNotSatisfiable(Exception):
    """A valid range that selects no byte of the file: the answer is 416 with `Content-Range: bytes */size`."""


@dataclass(frozen=True)
class ByteRange:
    """Bytes `start` to `end` (inclusive) of a file of `size` bytes."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The range that `header` asks of a file of `size` bytes; None means the whole file (200)."""
    match = _RANGE.fullmatch((header or "").replace(" ", ""))
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return ByteRange(max(size - suffix, 0), size - 1, size)
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    return ByteRange(start, end, size)
