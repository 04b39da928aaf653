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


def test_an_event_loop_woken_beside_a_pinned_worker_steps_aside(monkeypatch):
    """The loop's reader callback, run when a worker's wake-up came, steps aside: that
    wake-up is what queues a client on the worker's CPU. Two calls at once, so that neither
    spins (a spinning call steps aside on its own); the CPU the thread finds itself on is
    the one thing faked."""
    import asyncio

    from runtime_runnables import Sleeper
    from waiting import wait_for

    import runnerlib
    from runnerlib._shm import client as client_module

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    runner = runnerlib.Runner(Sleeper, name="aside-loop", cpu=1)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        try:
            handle = runner._handle

            def pins_read() -> int:
                handle._pins_until = 0.0  # read the workers' pins again
                handle._beside_worker()
                return handle._pins

            wait_for(pins_read, timeout=10, what="the worker's pin")
            pins = handle._pins
            worker_cpu = (pins & -pins).bit_length() - 1
            monkeypatch.setattr(client_module, "current_cpu", lambda: worker_cpu)
            hops: list[int] = []
            real = handle._step_aside
            monkeypatch.setattr(handle, "_step_aside", lambda: (hops.append(1), real()))

            async def two() -> list[float]:
                return await asyncio.gather(runner.sleep.async_run(0.05),
                                            runner.sleep.async_run(0.05))

            assert asyncio.run(two()) == [0.05, 0.05]
            assert hops, "woken beside the worker, the loop did not step aside"
        finally:
            runner.destroy()
