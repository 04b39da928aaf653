"""Errors of the ipc layer. runnerlib maps them onto its own error tree."""

from __future__ import annotations


class IpcError(Exception):
    """Base class of ipc errors."""


class SegmentError(IpcError, OSError):
    """A shared-memory segment could not be created, attached or mapped."""


class OverLimit(SegmentError):
    """Making a segment would take a process past the shared-memory limit it was given."""


class TooLarge(OverLimit):
    """One array of a message is larger than the receiver's message limit."""

    def __init__(self, nbytes: int, limit: int) -> None:
        super().__init__(f"an array of {nbytes} bytes is over the message limit of {limit}")
        self.nbytes = nbytes
        self.limit = limit


class CorruptRecord(IpcError, ValueError):
    """Bytes read from shared memory failed a bounds or consistency check."""


class RingFull(IpcError, TimeoutError):
    """A ring stayed full past the producer's timeout (back-pressure gave up)."""


class EncodeError(IpcError, TypeError):
    """A value cannot be encoded; the message says what is supported."""


class IpcWarning(RuntimeWarning):
    """Base class of ipc warnings."""


class FastPathDisabled(IpcWarning):
    """The C hot paths (ipc._fastring) disagree with ipc.ring_layout and are left unused: the
    ring runs its pure-Python code, correct but slower. Rebuild the extension."""


class OrderingWarning(IpcWarning):
    """This machine has no lock-free 64-bit atomics: the shared-memory protocol's atomicity
    and ordering cannot be guaranteed between processes."""
