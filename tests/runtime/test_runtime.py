"""The re-cut runtime with real processes: printing Runnables, stop() and its drain,
batched calls of a dying worker, destroy() racing calls, pickle refused where decoded, the
error tree at every public entry point, and the supervisor's snapshot of the channel table."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

import pytest
from runtime_runnables import BatchThenDie, Marker, Printer, RowCounter, Sleeper, Unpicklable
from waiting import wait_for

import runnerlib
from ipc.errors import SegmentError
from ipc.segment import FAULT_ENV
from runnerlib._shm.control import C_GEN, C_OWNER, C_STATE, MAX_CHANNELS, Control

HERE = os.path.dirname(os.path.abspath(__file__))




class _Collector:
    """A stand-in for sys.stderr that keeps every write (thread-safe). pytest's capfd is not
    used: its readouterr() reads and then truncates, and a line the supervisor's output pump
    writes in between is lost (seen under load)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        with self._lock:
            self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def text(self) -> str:
        with self._lock:
            return "".join(self._parts)


def test_a_printing_runnable_serves_and_its_output_reaches_stderr_prefixed(monkeypatch):
    """Prints at import, in __init__ and 256 KiB per call from a method: the server starts
    (the handshake has its own channel), calls answer, the output is on the server's
    stderr, each line prefixed with runner and worker."""
    sink = _Collector()
    monkeypatch.setattr(sys, "stderr", sink)
    runner = runnerlib.Runner(Printer, name="printer-prefix", cpu=1)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        for _ in range(3):
            assert runner.shout.run(256 << 10, _timeout=60) == 256 << 10
        runner.destroy()
        # the supervisor copies the output as it comes: wait for the last line of each call
        wait_for(lambda: sink.text().count("[printer-prefix:0] done shouting") >= 3,
                 what="worker output")
    err = sink.text()
    assert "[printer-prefix:0] printed at import by runtime_runnables" in err
    assert "[printer-prefix:0] hello from __init__" in err
    assert "[printer-prefix:0] and from __init__ on stderr" in err
    assert err.count("[printer-prefix:0] " + "x" * 1023 + "\n") >= 3 * 256


def _call_in_thread(fn, *args, **kwargs):
    box: dict[str, object] = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            box["error"] = exc
        box["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=run)
    t.start()
    return t, box


def test_stop_finishes_running_calls_and_fails_queued_ones_at_once():
    runner = runnerlib.Runner(Sleeper, name="drainer", cpu=1)
    server = runnerlib.Server([runner])
    server.start()
    try:
        runner.init_client(spawn=False)
        running, running_box = _call_in_thread(runner.sleep.run, 1.5, _timeout=120)
        wait_for(lambda: server.served[0].ctl.workers[0, 11] >= 1, what="call in flight")
        queued = [_call_in_thread(runner.sleep.run, 0.01, _timeout=120) for _ in range(3)]
        time.sleep(0.3)  # the queued calls are in the request ring behind the running one
    finally:
        server.stop(drain=30)
    running.join(30)
    assert running_box.get("value") == 1.5, running_box
    for t, box in queued:
        t.join(30)
        err = box.get("error")
        assert isinstance(err, runnerlib.RunnerError) and "stopping" in str(err), box
        assert box["elapsed"] < 20  # at once, not after the 120 s timeout
    with pytest.raises(runnerlib.RunnerError, match="stopp"):
        runner.sleep.run(0.01, _timeout=120)  # a call after the stop fails at once
    runner.destroy()


def test_calls_killed_at_the_drain_deadline_fail_with_worker_died():
    runner = runnerlib.Runner(Sleeper, name="overdrain", cpu=1)
    server = runnerlib.Server([runner])
    server.start()
    try:
        runner.init_client(spawn=False)
        t, box = _call_in_thread(runner.sleep.run, 60, _timeout=300)
        wait_for(lambda: server.served[0].ctl.workers[0, 11] >= 1, what="call in flight")
    finally:
        server.stop(drain=0.5)
    t.join(30)
    assert isinstance(box.get("error"), runnerlib.WorkerDied), box
    assert box["elapsed"] < 20
    runner.destroy()


def test_batched_calls_of_a_worker_dying_before_its_answers_get_worker_died():
    runner = runnerlib.Runner(BatchThenDie, name="batch-die", max_batch_size=8,
                              max_latency_ms=200)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)

        async def many():
            return await asyncio.gather(
                *(runner.run_then_die.async_run([i], _timeout=120) for i in range(4)),
                return_exceptions=True)

        t0 = time.monotonic()
        results = asyncio.run(many())
        assert all(isinstance(r, runnerlib.WorkerDied) for r in results), results
        assert time.monotonic() - t0 < 30  # not the 120 s timeout
        runner.destroy()


def test_destroy_while_another_thread_is_in_run_is_an_error_not_a_crash():
    """In a child process, so that a SIGSEGV would show as its exit code."""
    proc = subprocess.run([sys.executable, os.path.join(HERE, "destroy_race.py")],
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok" in proc.stdout


def test_allow_pickle_false_is_enforced_where_the_worker_decodes():
    runner = runnerlib.Runner(Marker, name="nopickle-worker", allow_pickle=False)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        runner._handle.allow_pickle = True  # a client that would send a pickle anyway
        with pytest.raises(runnerlib.ProtocolError, match="pickle"):
            runner.echo.run(Unpicklable(3), _timeout=60)
        runner._handle.allow_pickle = False
        assert runner.echo.run(3, _timeout=60) == ("ran", "3")
        runner.destroy()


def test_allow_pickle_false_is_enforced_where_the_client_decodes():
    """A client that does not allow pickle refuses a pickled answer (never unpickles it) with
    a ProtocolError, and its next calls work (issue 14.7, the client's end)."""
    from runtime_runnables import PickleMaker

    runner = runnerlib.Runner(PickleMaker, name="nopickle-client", allow_pickle=True)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        assert runner.make.run(2, _timeout=60).n == 2  # allowed: the object comes back
        runner._handle.allow_pickle = False  # this client decodes without pickle
        with pytest.raises(runnerlib.ProtocolError, match="pickle"):
            runner.make.run(3, _timeout=60)

        async def one() -> object:
            return await runner.make.async_run(4, _timeout=60)

        with pytest.raises(runnerlib.ProtocolError, match="pickle"):
            asyncio.run(one())
        runner._handle.allow_pickle = True
        assert runner.make.run(5, _timeout=60).n == 5
        runner.destroy()


def test_transport_errors_are_runner_errors_at_each_entry_point(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "ENOSPC:req")
    with pytest.raises(runnerlib.TransportError, match="shm-size") as info:
        runnerlib.Server([runnerlib.Runner(Marker, name="entry-start")]).start()
    assert isinstance(info.value.__cause__, SegmentError)
    monkeypatch.delenv(FAULT_ENV)

    runner = runnerlib.Runner(Marker, name="entry-calls")
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        monkeypatch.setenv(FAULT_ENV, "ENOSPC:ch")  # no room for a new channel ring

        def in_thread(fn):
            box: dict[str, BaseException] = {}

            def go() -> None:
                try:
                    fn()
                except BaseException as exc:  # noqa: BLE001
                    box["error"] = exc

            t = threading.Thread(target=go)
            t.start()
            t.join(60)
            return box.get("error")

        err = in_thread(lambda: runner.echo.run(1, _timeout=30))
        assert isinstance(err, runnerlib.TransportError), err

        async def stream() -> None:
            async for _ in runner.echo.async_stream(1, _timeout=30):
                pass

        for coro in (lambda: runner.echo.async_run(1, _timeout=30), stream):
            err = in_thread(lambda c=coro: asyncio.run(c()))
            assert isinstance(err, runnerlib.TransportError), err
        monkeypatch.delenv(FAULT_ENV)
        assert runner.echo.run(2, _timeout=60) == ("ran", "2")
        runner.destroy()

    monkeypatch.setenv(FAULT_ENV, "ENOSPC:ctl")
    spawned = runnerlib.Runner(Marker, name="entry-init")
    with pytest.raises(runnerlib.TransportError):
        spawned.init_client()  # the embedded server cannot start
    assert not spawned.initialized


def test_channel_table_scan_reads_a_private_snapshot():
    """A writer flipping channel rows while the supervisor scans: the scan never fails and
    never reports a row that was not claimed as claimed."""
    ctl = Control.create()
    stop = threading.Event()

    def scribble() -> None:
        rows = ctl.channels
        i = 0
        while not stop.is_set():
            slot = i % MAX_CHANNELS
            rows[slot, C_OWNER] = (i % 7) * 1000  # 0 = free
            rows[slot, C_GEN] = i
            rows[slot, C_STATE] = i % 3
            i += 1

    t = threading.Thread(target=scribble)
    t.start()
    try:
        for _ in range(300):
            for slot, owner, _gen in ctl.open_channels():
                assert 0 <= slot < MAX_CHANNELS and owner > 0
    finally:
        stop.set()
        t.join()
        ctl.segment.unlink()
        ctl.close()


def test_a_batch_of_more_rows_than_the_histogram_has_buckets_is_counted():
    """A 40,000-row batch lands in the batch-size histogram's last bucket; it once indexed
    past the end of the worker's counter row and killed the worker."""
    import numpy as np

    runner = runnerlib.Runner(RowCounter, name="big-batch", max_batch_size=65536, cpu=1)
    with runnerlib.Server([runner]) as server:
        runner.init_client(spawn=False)
        x = np.ones((40_000, 2), dtype=np.float32)
        np.testing.assert_array_equal(runner.count.run(x, _timeout=120), np.full(40_000, 2.0))
        row = server.served[0].ctl.workers[0]
        from runnerlib._shm.control import BATCH_HIST_BUCKETS, W_BATCH_HIST, W_RESTARTS

        assert int(row[W_BATCH_HIST + BATCH_HIST_BUCKETS - 1]) == 1
        assert int(row[W_RESTARTS]) == 0
        runner.destroy()
