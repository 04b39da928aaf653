"""``runnerlib.shared_array``: arrays that calls pass by reference (ipc.shared does the work).

The memory comes out of the shared-memory budget: ``shm_budget`` / ``RUNNERLIB_SHM_BUDGET``
when set, else (inside a worker) its server's budget, caps the bytes of shared arrays one
process may hold, and a full /dev/shm is a clear error at creation, never a SIGBUS later.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ipc import shared
from ipc.errors import SegmentError

__all__ = ["shared_array"]


def shared_array(shape: int | tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """A writable, C-contiguous ndarray in shared memory of its own (contents undefined, as
    with ``numpy.empty``).

    Passing it, or any view of it, to a runner call, or returning it (or a view) from a
    Runnable method, sends a reference instead of its bytes: the receiver's array views the
    same memory (writable if the sender's was). The memory lives while any process still
    holds an array viewing it. Writing into it while a call that was given it runs, or after
    a call returned it, is the writer's concern: every process sees the write."""
    from runnerlib import config
    from runnerlib._shm import protocol

    try:
        return shared.empty(shape, dtype, limit=config.shm_budget())  # None: the process's
    except SegmentError as exc:
        raise protocol.runner_error(exc) from exc
