"""Errors of the batching layer. runnerlib maps them onto its own error tree."""

from __future__ import annotations


class BatchingError(Exception):
    """Base class of batching errors."""


class Overloaded(BatchingError):
    """A call was refused because it could not meet ``max_latency_ms`` (on_overload="reject").

    runnerlib turns it into ``RunnerOverloaded`` for the caller.
    """
