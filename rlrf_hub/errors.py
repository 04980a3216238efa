"""Failures a run expects. `rlrf-hub run` reports each as one line, `<field or file>: <what> (<what to do>)`,
without a traceback; anything else is a bug and keeps its traceback."""

from __future__ import annotations


class RunError(RuntimeError):
    """The loop cannot continue; the message says why and what to change."""
