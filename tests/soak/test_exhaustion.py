"""Resource exhaustion (SPEC 8): when a segment cannot be created (ENOSPC, EMFILE; through
the RUNNERLIB_FAULT_SEGMENT_CREATE seam of ipc.segment, or a small tmpfs in a private mount
namespace) and when the request ring stays full, callers get back-pressure or a clear error,
never corruption or a hang."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from soak_runnables import soak_runner

import runnerlib
from ipc.errors import SegmentError
from ipc.segment import FAULT_ENV

HERE = os.path.dirname(os.path.abspath(__file__))


def test_server_start_fails_clearly_without_space(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "ENOSPC:req")
    server = runnerlib.Server([soak_runner("no-space")])
    with pytest.raises(runnerlib.TransportError, match="No space left.*shm-size") as info:
        server.start()
    assert isinstance(info.value.__cause__, SegmentError)
    assert runnerlib.registry.find("no-space") is None  # and conftest: nothing left behind


def test_client_channel_fails_clearly_without_descriptors(monkeypatch):
    runner = soak_runner("no-fds")
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        monkeypatch.setenv(FAULT_ENV, "EMFILE:ch")
        with pytest.raises(runnerlib.TransportError, match="Too many open files") as info:
            runner.echo.run(1, _timeout=5)
        assert isinstance(info.value.__cause__, SegmentError)
        monkeypatch.delenv(FAULT_ENV)
        assert runner.echo.run(2, _timeout=30) == 2  # the failed channel left no claim
        runner.destroy()


def test_large_call_fails_clearly_without_space(monkeypatch):
    runner = soak_runner("no-space-big")
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        x = np.arange((64 << 20) // 8, dtype=np.int64)  # larger than half the request ring
        monkeypatch.setenv(FAULT_ENV, "ENOSPC:hand,big,arr")  # large arrays go in "arr" ones
        with pytest.raises(runnerlib.TransportError, match="No space left"):
            runner.echo.run(x, _timeout=30)
        monkeypatch.delenv(FAULT_ENV)
        np.testing.assert_array_equal(runner.echo.run(x, _timeout=60), x)
        runner.destroy()


def test_full_request_ring_is_back_pressure_then_timeout(monkeypatch):
    from runnerlib._shm import supervisor as server_mod

    monkeypatch.setattr(server_mod, "REQUEST_RING_BYTES", 64 << 10)
    runner = soak_runner("full-ring")
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        blocker = threading.Thread(target=runner.sleep.run, args=(4,))
        blocker.start()
        time.sleep(0.5)  # the only worker is asleep: nobody empties the ring

        async def fill():
            xs = [np.full((1, 512), i, dtype=np.int64) for i in range(60)]  # ~4 KiB each
            return xs, await asyncio.gather(
                *(runner.add_one.async_run(x, _timeout=60) for x in xs))

        result = {}
        filler = threading.Thread(target=lambda: result.update(r=asyncio.run(fill())))
        filler.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        with pytest.raises(runnerlib.RunnerTimeout):  # ring full: waits, then its timeout
            runner.echo.run(np.zeros(8 << 10), _timeout=1.0)
        assert time.monotonic() - t0 < 1.0 + 2.0
        blocker.join(30)
        filler.join(60)
        xs, ys = result["r"]
        for x, y in zip(xs, ys, strict=True):  # every queued call got its own answer
            np.testing.assert_array_equal(y, x + 1)
        assert runner.echo.run("after") == "after"
        runner.destroy()


def test_async_run_under_back_pressure_never_blocks_the_event_loop(monkeypatch):
    """Issue 14.9: calls of one event loop wait for room in a full request ring (the only
    worker is asleep) while a ticker on the same loop keeps running: no gap of a second or
    more (the old client waited for room inside the loop's thread, sleeping in 2 ms slices,
    for as long as the ring stayed full: about 4 s here), and every call is answered."""
    from runnerlib._shm import supervisor as server_mod

    monkeypatch.setattr(server_mod, "REQUEST_RING_BYTES", 1 << 20)
    runner = soak_runner("loop-back-pressure")
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        blocker = threading.Thread(target=runner.sleep.run, args=(4,))
        blocker.start()
        time.sleep(0.5)  # the only worker is asleep: nobody empties the ring

        async def main():
            gaps = []
            stop = asyncio.Event()

            async def ticker():
                last = time.monotonic()
                while not stop.is_set():
                    await asyncio.sleep(0.005)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            tick = asyncio.ensure_future(ticker())
            await asyncio.sleep(0.05)
            xs = [np.full((1, 4096), i, dtype=np.int64) for i in range(48)]  # 32 KiB each
            ys = await asyncio.gather(*(runner.add_one.async_run(x, _timeout=60) for x in xs))
            stop.set()
            await tick
            return xs, ys, max(gaps)

        xs, ys, worst = asyncio.run(main())
        blocker.join(30)
        for x, y in zip(xs, ys, strict=True):
            np.testing.assert_array_equal(y, x + 1)
        assert worst < 1.0, f"the event loop stood still for {worst:.2f} s"
        runner.destroy()


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare -m to mount a small "
                    "private tmpfs on /dev/shm")
def test_small_tmpfs_is_an_error_not_a_crash():
    script = os.path.join(HERE, "soak_tmpfs_script.py")
    code = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount -t tmpfs -o size=48m tmpfs /dev/shm && exec {sys.executable} {script}"],
        capture_output=True, text=True, timeout=180,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert "CLEAR ERROR" in code.stdout and code.returncode == 0, (
        f"rc={code.returncode}\n{code.stdout[-2000:]}\n{code.stderr[-3000:]}")
