"""Errors of the ipc layer. runnerlib maps them onto its own error tree."""

from __future__ import annotations


class IpcError(Exception):
    """Base class of ipc errors."""


class SegmentError(IpcError, OSError):
    """A shared-memory segment could not be created, attached or mapped."""


class CorruptRecord(IpcError, ValueError):
    """Bytes read from shared memory failed a bounds or consistency check."""


class RingFull(IpcError, TimeoutError):
    """A ring stayed full past the producer's timeout (back-pressure gave up)."""


class EncodeError(IpcError, TypeError):
    """A value cannot be encoded; the message says what is supported."""
