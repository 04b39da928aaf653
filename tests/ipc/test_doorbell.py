"""Doorbells: no system call without sleepers, wake-ups across processes and in an event loop."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import stat
import threading

import ipc_test_workers as workers
import pytest

from ipc.doorbell import Doorbell
from ipc.errors import SegmentError
from ipc.segment import Segment

CTX = mp.get_context("spawn")


@pytest.fixture
def seg():
    s = Segment.create(4096, tag="bells")
    yield s
    s.close()
    s.unlink()


@pytest.fixture
def bells(seg):
    ping = Doorbell.create(seg, 0)
    pong = Doorbell.create(seg, 64)
    yield ping, pong
    for b in (ping, pong):
        b.close()
        b.unlink()


def test_fifo_name_mode_and_attach(seg, bells):
    ping, _ = bells
    base = os.path.basename(ping.path)
    assert ping.path.startswith("/dev/shm/rl.") and base.endswith(".bell")
    assert int(base.split(".")[1]) == os.getpid()
    st = os.stat(ping.path)
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    other = Doorbell.attach(seg, 0)
    try:
        assert other.path == ping.path
    finally:
        other.close()


def test_attach_rejects_garbage(seg):
    seg.buf[128:192] = b"\x07" * 64
    with pytest.raises(SegmentError):
        Doorbell.attach(seg, 128)
    with pytest.raises(ValueError):
        Doorbell.attach(seg, 100)  # not 64-aligned
    with pytest.raises(ValueError):
        Doorbell.create(seg, 4096)


def test_ring_without_sleepers_writes_nothing(bells):
    ping, _ = bells
    for _ in range(100):
        ping.ring()
    with pytest.raises(BlockingIOError):
        os.read(ping.fileno(), 1)
    assert ping.sleepers == 0


def test_wait_ready_and_timeout(bells):
    ping, _ = bells
    assert ping.wait(lambda: True, timeout=0)
    assert not ping.wait(lambda: False, spin=0, timeout=0.02)
    assert not ping.wait(lambda: False, spin=1e-4, timeout=0.02)
    assert ping.sleepers == 0


def test_several_waiters_all_wake(bells):
    ping, _ = bells
    flag = threading.Event()
    results = []

    def waiter():
        results.append(ping.wait(flag.is_set, spin=0, timeout=30))

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    # let them declare themselves asleep (condition-based, generous deadline)
    deadline = 200
    while ping.sleepers < 3 and deadline:
        threading.Event().wait(0.01)
        deadline -= 1
    flag.set()
    ping.ring()
    for t in threads:
        t.join(30)
    assert results == [True, True, True]
    assert ping.sleepers == 0


def test_cross_process_sync_wakeups(seg, bells):
    ping, pong = bells
    q = seg.buf.cast("Q")
    rounds = 30
    try:
        p = CTX.Process(target=workers.bell_echo, args=(seg.name, rounds))
        p.start()
        for i in range(1, rounds + 1):
            q[16] = i
            ping.ring()
            assert pong.wait(lambda i=i: q[24] >= i, spin=0, timeout=30)
        p.join(30)
        assert p.exitcode == 0
    finally:
        q.release()


def test_cross_process_blocking_waiter(seg, bells):
    """The child rings after a pause, so this process is really asleep in poll()."""
    ping, pong = bells
    rounds = 5
    q = seg.buf.cast("Q")
    try:
        p = CTX.Process(target=workers.bell_ringer, args=(seg.name, rounds, 0.02))
        p.start()
        for i in range(1, rounds + 1):
            assert ping.wait(lambda i=i: q[16] >= i, spin=0, timeout=30)
            q[24] = i
            pong.ring()
        p.join(30)
        assert p.exitcode == 0
    finally:
        q.release()


def test_standing_waiter_wakes_an_event_loop(bells):
    """arm/disarm/drain, the way an event loop waits (its own reader on the FIFO fd), woken by
    a ring from another thread; no wake-up byte is written once it is disarmed."""
    ping, _ = bells
    state = {"go": False}

    async def main():
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        loop.add_reader(ping.fileno(), woken.set)
        ping.arm()
        try:
            assert ping.sleepers == 1
            assert not state["go"]  # the re-check after arm(): nothing to do yet

            def ringer():
                state["go"] = True
                ping.ring()

            threading.Timer(0.02, ringer).start()
            await asyncio.wait_for(woken.wait(), 30)
            ping.drain()
            assert state["go"]
        finally:
            loop.remove_reader(ping.fileno())
            ping.disarm()

    asyncio.run(main())
    assert ping.sleepers == 0
    ping.ring()
    with pytest.raises(BlockingIOError):
        os.read(ping.fileno(), 1)
