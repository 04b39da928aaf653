"""The worker's direct lane (a single inline call to a plain method, record to answer in one
frame): every outcome a call can have, answered as the general path answers it, and the
statistics and held-calls entries it leaves, with real processes."""

from __future__ import annotations

import asyncio
import operator
import os

import numpy as np
import pytest
from runtime_runnables import Plain
from waiting import wait_for

import runnerlib
from ipc.segment import FAULT_ENV
from runnerlib import registry, stats


def test_every_outcome_of_a_plain_call_and_the_counters_it_leaves():
    runner = runnerlib.Runner(Plain, name="direct-lane", timeout=30)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        x = np.arange(16, dtype=np.float32).reshape(1, 16)
        for i in range(200):  # the remembered codec plans from the second call on
            out = runner.echo.run(x + i)
            np.testing.assert_array_equal(out, x + i)
        assert runner.echo.run({"a": [1, "b"]}) == {"a": [1, "b"]}  # the general codec path
        with pytest.raises(ValueError, match="boom"):
            runner.fail.run("boom")
        assert runner.counts.run(4) == [0, 1, 2, 3]
        with pytest.raises(runnerlib.RunnerError):
            runner.unencodable.run()
        big = np.ones(1 << 18, dtype=np.float32)  # 1 MiB: the answer is not an inline record
        np.testing.assert_array_equal(runner.echo.run(big), big)
        np.testing.assert_array_equal(runner.echo.run(x), x)  # and the worker goes on
        calls = 200 + 6
        info = registry.find("direct-lane")
        wait_for(lambda: all(w["in_flight"] == 0 for w in stats.snapshot(info)["workers"]),
                 what="in_flight back to 0")
        snap = stats.snapshot(info)
        assert snap["requests"] == calls
        assert snap["errors"] == 2  # the raise and the result the codec refused
        assert sum(snap["latency_hist"]) == calls  # every call answered once
        ran = calls - 1  # a call that raised is not counted as a batch
        assert snap["batches"] == snap["rows"] == snap["batch_calls"] == ran
        assert snap["batch_rows_hist"][1] == ran  # every batch one row
        runner.destroy()


def test_a_call_past_its_deadline_is_not_run():
    runner = runnerlib.Runner(Plain, name="direct-late", timeout=30)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        with pytest.raises(runnerlib.RunnerTimeout):
            runner.echo.run(1, _timeout=1e-9)
        assert runner.echo.run(2) == 2
        info = registry.find("direct-late")
        wait_for(lambda: sum(w["in_flight"] for w in stats.snapshot(info)["workers"]) == 0,
                 what="in_flight back to 0")
        assert stats.snapshot(info)["requests"] == 1  # the late call was dropped unrun
        runner.destroy()


class _FailsToUnpickle:
    """Pickles fine here; unpickling it in the worker raises (1 / 0)."""

    def __reduce__(self):
        return (operator.truediv, (1, 0))


def test_a_call_by_handoff_takes_the_direct_lane_with_every_outcome():
    """Messages over an inline record (64 KiB) and under a shared array's size (1 MiB)
    travel in handoff segments: the lane opens the segment, and an argument that fails to
    decode after it is open is answered as an error, once, with the segment given back."""
    runner = runnerlib.Runner(Plain, name="direct-big", timeout=30, allow_pickle=True)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        x = np.arange(40_000, dtype=np.float32)  # 160 KB each way
        for i in range(50):
            np.testing.assert_array_equal(runner.echo.run(x + i), x + i)
        for _ in range(20):  # more than a pool keeps: a segment not given back would hang
            with pytest.raises(runnerlib.ProtocolError, match="could not be loaded"):
                runner.echo.run((x, _FailsToUnpickle()))
        with pytest.raises(ValueError, match="boom"):
            runner.fail.run("boom" * 20_000)  # a handoff in, the error inline out
        small = runner.echo.run(np.ones(4, dtype=np.float32))  # an inline call after them
        np.testing.assert_array_equal(small, np.ones(4, dtype=np.float32))
        info = registry.find("direct-big")
        wait_for(lambda: all(w["in_flight"] == 0 for w in stats.snapshot(info)["workers"]),
                 what="in_flight back to 0")
        snap = stats.snapshot(info)
        assert snap["requests"] == 50 + 1 + 1  # the undecodable calls never ran
        assert sum(w["restarts"] for w in snap["workers"]) == 0
        runner.destroy()


def test_no_room_for_a_large_answer_is_an_error_answer_not_a_dead_worker(monkeypatch):
    """A small call whose answer needs a handoff segment that /dev/shm cannot give (ENOSPC,
    injected in the worker): the caller gets a clear error and the same worker goes on."""
    monkeypatch.setenv(FAULT_ENV, "ENOSPC:hand")  # inherited by the worker; handoffs only
    runner = runnerlib.Runner(Plain, name="direct-nospace", timeout=30)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        assert runner.echo.run(3) == 3  # inline both ways: no segment needed
        with pytest.raises(runnerlib.RunnerError, match="No space left"):
            runner.ones.run(40_000)  # 160 KB: a handoff answer
        np.testing.assert_array_equal(runner.ones.run(16), np.ones(16, dtype=np.float32))
        info = registry.find("direct-nospace")
        snap = stats.snapshot(info)
        assert sum(w["restarts"] for w in snap["workers"]) == 0
        runner.destroy()


def _my_handoff_segments() -> set[str]:
    from ipc.names import parse_name

    return {n for n in os.listdir("/dev/shm")
            if (p := parse_name(n)) is not None and p.is_segment and p.tag == "hand"
            and p.pid == os.getpid()}


def test_an_echo_by_handoff_comes_back_in_the_callers_own_segment():
    """A method that returns its argument (by handoff: 64 KiB to 1 MiB) answers in the
    caller's own segment, no copy back (ipc.codec.echo): every answer is its argument, a kept
    answer is never overwritten by later calls, a Runnable that keeps its argument keeps it
    intact too, and the caller's segments stay few once answers are let go."""
    runner = runnerlib.Runner(Plain, name="direct-echo", cpu=1, timeout=30)  # one worker
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
        kept = [(i, runner.echo.run(x + i)) for i in range(20)]
        for i in range(50):
            y = runner.echo.run(x * i)
            np.testing.assert_array_equal(y, x * i)
            assert not y.flags.writeable
        for i, y in kept:
            np.testing.assert_array_equal(y, x + i)  # never overwritten
        del kept, y
        sums = []
        for i in range(8):  # the worker keeps each argument and returns it
            np.testing.assert_array_equal(runner.keep.run(x - i), x - i)
            sums.append(float((x - i).sum()))
        for i in range(30):  # the caller reuses its free segments meanwhile
            np.testing.assert_array_equal(runner.echo.run(x + 2 * i), x + 2 * i)
        np.testing.assert_allclose(runner.kept_sums.run(), sums, rtol=1e-6)  # intact
        seen: set[str] = set()
        for i in range(200):  # let go at once: the same few segments serve every call
            np.testing.assert_array_equal(runner.echo.run(x / (i + 1)), x / (i + 1))
            seen |= _my_handoff_segments()
        assert len(seen) <= 8 + 6, len(seen)  # the 8 the worker keeps, a few in turn
        view = runner.echo.run(np.arange(40_000, dtype=np.int64).reshape(2, -1))
        np.testing.assert_array_equal(view, np.arange(40_000, dtype=np.int64).reshape(2, -1))
        runner.destroy()


def test_many_echoes_in_flight_come_back_whatever_the_pool_trims():
    """64 echoes by handoff in flight at once from one event loop, each kept, with real
    processes: while the loop still sends, the worker lends answers back, and the caller's
    pool may take segments out of use (its trim) before their answers are read; every answer
    is found and read. Whether the trim comes first depends on timing here; that order is
    tested deterministically in tests/ipc/test_handoff.py."""
    runner = runnerlib.Runner(Plain, name="direct-echo-many", cpu=1, timeout=30)
    x = np.random.default_rng(1).random((2, 16_384), dtype=np.float32)  # 128 KiB

    async def main():
        outs = await asyncio.gather(*(runner.echo.async_run(x + i) for i in range(64)))
        for i in range(40):
            np.testing.assert_array_equal(await runner.echo.async_run(x * i), x * i)
        for i, y in enumerate(outs):
            np.testing.assert_array_equal(y, x + i)

    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        for _ in range(3):
            asyncio.run(main())
        runner.destroy()
