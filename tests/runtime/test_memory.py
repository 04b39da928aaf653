"""Issue 13's memory design with real processes: nothing a caller or a Runnable keeps, and no
stopped client, stalls anyone else (docs/design.md, "Memory").

- results kept for ever by a caller (small: copied out of the channel ring; large: handoff
  segments of their own) never fill the channel ring;
- inputs kept for ever by a Runnable never fill the shared request ring;
- a client stopped (SIGSTOP, a debugger) with answers piling up in its channel never blocks
  the worker for other clients, its answers arrive once it runs again, and a worker that
  dies meanwhile is restarted and its calls answered WorkerDied;
- channel rings are small (memory follows use), and a worker killed while asleep leaves no
  sleeper counted on the workers' doorbell.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from runtime_runnables import Keeper
from waiting import wait_for as _wait_for

import runnerlib
from ipc.doorbell import Doorbell
from runnerlib import registry
from runnerlib._shm.client import CHANNEL_RING_BYTES
from runnerlib._shm.control import W_PID, W_READY, W_STATE, WORKERS_BELL_OFFSET, Control

HERE = os.path.dirname(os.path.abspath(__file__))


def wait_for(cond, timeout: float = 60.0, what: str = "condition") -> None:
    _wait_for(cond, timeout, what, poll=0.02)




def test_a_caller_keeping_every_result_never_fills_its_channel():
    """20,000 float32[1024] results kept (80 MiB: five times the old 16 MiB channel ring,
    where the old design timed out after ~3,800 calls), then 48 results of 1 MiB kept."""
    runner = runnerlib.Runner(Keeper, name="keep-results", cpu=1)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        kept = [runner.block.run(1024, float(i % 1000), _timeout=30) for i in range(20_000)]
        big = [runner.block.run(1 << 18, float(i), _timeout=30) for i in range(48)]
        assert all(kept[i][0] == float(i % 1000) for i in range(0, 20_000, 997))
        assert [int(b[-1]) for b in big] == list(range(48))
        assert not kept[0].flags.writeable  # read-only, like a view
        runner.destroy()
        del kept, big


def test_a_runnable_keeping_every_input_never_fills_the_request_ring():
    """A Runnable keeps 24,000 float32[1024] inputs (96 MiB, more than the 64 MiB request
    ring) and 40 inputs of 1 MiB; a second client's calls keep being served throughout."""
    runner = runnerlib.Runner(Keeper, name="keep-inputs", cpu=1)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        x = np.ones(1024, dtype=np.float32)
        for i in range(24_000):
            assert runner.keep.run(x, _timeout=30) == i + 1
        for i in range(40):
            assert runner.keep.run(np.ones(1 << 18, dtype=np.float32), _timeout=30) == 24_001 + i
        out = subprocess.run(
            [sys.executable, "-c",
             "import sys, numpy as np, runnerlib; sys.path.insert(0, sys.argv[1]);"
             "from runtime_runnables import Keeper;"
             "r = runnerlib.Runner(Keeper, name='keep-inputs', cpu=1);"
             "r.init_client(spawn=False);"
             "print(r.nbytes.run(np.ones(8, np.float32), _timeout=30))", HERE],
            capture_output=True, text=True, timeout=120)
        assert out.stdout.strip().splitlines()[-1] == "32", out.stderr
        runner.destroy()


def test_a_stopped_client_with_a_full_channel_stalls_nobody():
    """Client A has 320 answers of 60 KiB coming (19 MiB: more than the old 16 MiB channel
    ring, 19 times the new one) and is stopped
    with SIGSTOP: other callers are served at once, a worker killed meanwhile is restarted,
    and once A runs again every one of its calls is answered (its value, or WorkerDied for
    the calls the killed worker held)."""
    runner = runnerlib.Runner(Keeper, name="stalled-client", cpu=1)
    with runnerlib.Server([runner]):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, *sys.path]))
        a = subprocess.Popen([sys.executable, os.path.join(HERE, "stalled_client.py"),
                              "stalled-client"], stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert a.stdout is not None
            while True:  # runtime_runnables prints at import
                line = a.stdout.readline()
                if not line:
                    raise AssertionError("client A ended before it sent its calls")
                if line.strip() == "sent":
                    break
            os.kill(a.pid, signal.SIGSTOP)
            runner.init_client(spawn=False)
            # the worker answers A's calls into a ring nobody drains: it must not wait on it
            for i in range(50):
                assert runner.block.run(4, float(i), _timeout=5)[0] == float(i)
            info = registry.find("stalled-client")
            assert info is not None
            ctl = Control.attach(info.control)
            try:
                pid = int(ctl.workers[0, W_PID])
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: int(ctl.workers[0, W_PID]) != pid
                         and int(ctl.workers[0, W_STATE]) == W_READY, what="worker restart")
            finally:
                ctl.close()
            for i in range(20):
                assert runner.block.run(4, float(i), _timeout=5)[0] == float(i)
        finally:
            os.kill(a.pid, signal.SIGCONT)
        a.wait(timeout=120)
        out = a.stdout.read()
        assert a.returncode == 0, out
        last = out.strip().splitlines()[-1].split()
        assert last[0] == "ok" and int(last[1]) + int(last[2]) == 320, out
        runner.destroy()


def test_channel_rings_are_small_whatever_the_thread_count():
    """32 threads calling run() hold 32 small rings (the old design: 32 x 16 MiB)."""
    runner = runnerlib.Runner(Keeper, name="many-threads", cpu=1)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        barrier = threading.Barrier(32)
        errors: list[BaseException] = []

        def call() -> None:
            try:
                barrier.wait(30)
                for _ in range(5):
                    runner.block.run(16, 1.0, _timeout=30)
                barrier.wait(30)  # every thread has its channel...
                barrier.wait(30)  # ...and keeps it until it was measured
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call) for _ in range(31)]
        for t in threads:
            t.start()
        barrier.wait(30)
        runner.block.run(16, 1.0, _timeout=30)
        barrier.wait(30)
        me = str(os.getpid())
        rings = [n for n in os.listdir("/dev/shm") if n.startswith(f"rl.{me}.")
                 and n.endswith(".ch")]
        total = sum(os.stat(os.path.join("/dev/shm", n)).st_size for n in rings)
        barrier.wait(30)
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert len(rings) == 32, rings
        assert CHANNEL_RING_BYTES <= 1 << 20
        assert total <= 32 * (CHANNEL_RING_BYTES + (64 << 10)), total
        runner.destroy()


def test_a_worker_killed_asleep_leaves_no_sleeper_on_the_doorbell():
    runner = runnerlib.Runner(Keeper, name="killed-asleep", cpu=1)
    with runnerlib.Server([runner]):
        info = registry.find("killed-asleep")
        assert info is not None
        ctl = Control.attach(info.control)
        bell = Doorbell.attach(ctl.segment, WORKERS_BELL_OFFSET)
        try:
            wait_for(lambda: bell.sleepers == 1, what="the idle worker asleep")
            for _ in range(3):
                pid = int(ctl.workers[0, W_PID])
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda p=pid: int(ctl.workers[0, W_PID]) != p
                         and int(ctl.workers[0, W_STATE]) == W_READY, what="worker restart")
            # the new worker wakes once (IDLE_WAKE) and sleeps again: one sleeper, never more
            time.sleep(1.5)
            wait_for(lambda: bell.sleepers == 1, what="one sleeper counted")
            assert bell.sleepers == 1
        finally:
            bell.close()
            ctl.close()


@pytest.mark.parametrize("calls", [16])
def test_async_calls_behind_large_ones_under_back_pressure_are_all_answered(calls):
    """One worker busy with two 24 MiB calls, ``calls`` small calls behind them on the same
    event loop: every call is answered (issue 13.9 lost one until its timeout)."""
    runner = runnerlib.Runner(Keeper, name="async-backpressure", cpu=1)

    async def go():
        big = [runner.nbytes.async_run(np.ones(6 << 20, np.float32), _timeout=60)
               for _ in range(2)]
        small = [runner.nbytes.async_run(np.ones(i + 1, np.float32), _timeout=60)
                 for i in range(calls)]
        return await asyncio.gather(*big, *small)

    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        for _ in range(3):
            got = asyncio.run(asyncio.wait_for(go(), 90))
            assert got == [24 << 20, 24 << 20] + [4 * (i + 1) for i in range(calls)]
        runner.destroy()


def test_a_writer_stopped_inside_its_reservation_stalls_nobody():
    """Client A stops (SIGSTOP) between reserving a request record and committing it. The
    old design froze the request ring for every client once 64 MiB more had been sent; now
    the server moves the runner to a fresh ring once the reservation is STALE_RESERVATION old:
    80 MiB of other calls go through, A's half-written record is never read, and A works
    again once continued."""
    runner = runnerlib.Runner(Keeper, name="stopped-writer", cpu=1)
    with runnerlib.Server([runner]):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, *sys.path]))
        env["RUNNERLIB_FAULT_STOP_AFTER_RESERVE"] = "2"
        a = subprocess.Popen([sys.executable, os.path.join(HERE, "stopped_writer.py"),
                              "stopped-writer"], stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert a.stdout is not None
            while True:
                line = a.stdout.readline()
                assert line, "client A ended early"
                if line.startswith("ready"):
                    break
            wait_for(lambda: open(f"/proc/{a.pid}/stat").read().rsplit(")", 1)[1].split()[0]
                     == "T", what="client A stopped inside its reservation")
            runner.init_client(spawn=False)
            x = np.ones(1024, dtype=np.float32)
            for i in range(20_000):  # 80 MiB of requests through a 64 MiB ring
                assert runner.keep.run(x, _timeout=30) == i + 1
        finally:
            os.kill(a.pid, signal.SIGCONT)
        a.wait(timeout=120)
        out = a.stdout.read()
        assert a.returncode == 0, out
        lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
        assert lines["first"] in ("answered 2.0", "timed out"), out
        assert lines["second"] == "3.0", out
        runner.destroy()
