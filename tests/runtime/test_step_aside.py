"""A client thread found on a pinned worker's CPU steps aside (issue 16): it moves off that
CPU and keeps the affinity its owner gave it."""

from __future__ import annotations

import os
import threading

import pytest

from runnerlib._shm.client import ShmHandle

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no affinity")


def _bare(pins: int) -> ShmHandle:
    h = object.__new__(ShmHandle)  # only what _step_aside reads
    h._local = threading.local()
    h._pins = pins
    return h


def test_step_aside_moves_off_and_keeps_the_mask():
    mine = os.sched_getaffinity(0)
    if len(mine) < 2:
        pytest.skip("needs two CPUs")
    worker = max(mine)
    os.sched_setaffinity(0, {worker})  # run on the worker's CPU for a moment...
    os.sched_setaffinity(0, mine)  # ...with the mask the owner gave this thread
    h = _bare(1 << worker)
    h._step_aside()
    assert os.sched_getaffinity(0) == mine  # the owner's mask, unchanged
    assert os.sched_getaffinity(0) != {worker}
    h._step_aside()  # again within HOP_EVERY: does nothing
    assert os.sched_getaffinity(0) == mine


def test_a_thread_pinned_beside_the_worker_stays():
    mine = os.sched_getaffinity(0)
    worker = max(mine)
    try:
        os.sched_setaffinity(0, {worker})
        _bare(1 << worker)._step_aside()
        assert os.sched_getaffinity(0) == {worker}  # its owner put it there: left alone
    finally:
        os.sched_setaffinity(0, mine)
