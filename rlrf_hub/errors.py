"""Failures a run expects. `rlrf-hub run` reports each as one line, `<field or file>: <what> (<what to do>)`,
without a traceback; anything else is a bug and keeps its traceback."""

from __future__ import annotations

from pathlib import Path


class RunError(RuntimeError):
    """The loop cannot continue; the message says why and what to change."""


class RecipeError(ValueError):
    """A recipe value is wrong; the message names the field."""


def read_utf8(path: Path, field_name: str) -> str:
    """The text of `path`; a byte that is not UTF-8 is a `RecipeError` naming the file, line and byte offset."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RecipeError(f"{field_name}: cannot read {path}: {err.strerror or err} (check the path)") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise RecipeError(
            f"{field_name}: {path} line {line} (byte {err.start}) is not UTF-8: {err.reason} (save the file as UTF-8)"
        ) from None
