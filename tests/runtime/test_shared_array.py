"""``runnerlib.shared_array`` with real worker processes (SPEC section 6, issue 16): calls pass
references instead of bytes, both ways; lifetime follows Python references in every process;
nothing leaks when a side dies (SIGKILL included); batching, the budget, keeping for ever and
fork all work."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from runtime_runnables import SharedRows, SharedUser
from waiting import wait_for

import runnerlib
from ipc import shared
from ipc.names import SHM_DIR, parse_name

HERE = os.path.dirname(os.path.abspath(__file__))


def _arr_segments(pid: int) -> list[str]:
    """The shared-array segments in /dev/shm whose name carries ``pid``."""
    out = []
    for n in os.listdir(SHM_DIR):
        p = parse_name(n)
        if p is not None and p.tag == shared.TAG and p.pid == pid:
            out.append(n)
    return out


@pytest.fixture
def user():
    runner = runnerlib.Runner(SharedUser, name="shared-user", cpu=1)
    with runnerlib.Server([runner]) as server:
        runner.init_client(spawn=False)
        yield runner, server
        runner.destroy()


def test_an_argument_travels_as_a_reference_and_the_worker_writes_into_it(user):
    runner, _ = user
    x = runnerlib.shared_array((256, 1024))
    x[:] = 3.0
    nbytes, name, writeable, worker_pid = runner.probe.run(x, _timeout=30)
    assert nbytes == x.nbytes
    assert name == shared.block_of(x).name  # the worker viewed this very segment
    assert writeable
    assert worker_pid != os.getpid()
    runner.fill.run(x[10:20, ::2], 7.0, _timeout=30)  # a strided view: its elements only
    assert (x[10:20, ::2] == 7.0).all()
    assert (x[10:20, 1::2] == 3.0).all() and (x[:10] == 3.0).all()
    # a read-only view stays read-only on the other side
    ro = x[:4]
    ro.flags.writeable = False
    assert runner.probe.run(ro, _timeout=30)[2] is False
    # a plain array still travels as bytes
    assert runner.probe.run(np.ones(8, np.float32), _timeout=30)[1] is None
    del x, ro


def test_returning_the_argument_gives_back_the_same_memory(user):
    runner, _ = user
    x = runnerlib.shared_array(1 << 20)
    x[:] = np.arange(1 << 20, dtype=np.float32)
    y = runner.echo.run(x, _timeout=30)
    assert shared.block_of(y) is shared.block_of(x)  # no copy either way
    assert np.shares_memory(x, y) and y.flags.writeable
    v = runner.echo.run(x[100:200:5], _timeout=30)
    np.testing.assert_array_equal(v, x[100:200:5])
    assert np.shares_memory(v, x)
    v2 = asyncio.run(runner.echo.async_run(x[::-1], _timeout=30))
    assert v2[0] == x[-1] and np.shares_memory(v2, x)
    del x, y, v, v2


def test_a_method_writing_into_a_shared_array_it_made_returns_it_by_reference(user):
    runner, _ = user
    x = runnerlib.shared_array((64, 4096))
    x[:] = 1.5
    worker = runner.pid.run(_timeout=30)
    for _ in range(20):
        y = runner.double.run(x, _timeout=30)
        assert (y == 3.0).all()
        block = shared.block_of(y)
        assert block is not None and parse_name(block.name).pid == worker
    # let go of everything: the worker reuses warm segments, it does not make one per call
    del y, block
    gc.collect()
    wait_for(lambda: len(_arr_segments(worker)) <= shared.KEEP + 1, 30,
             "the worker to keep at most KEEP idle shared arrays")
    del x


def test_a_result_kept_is_never_overwritten_by_later_calls(user):
    runner, _ = user
    kept = [runner.make.run(4096, float(i), _timeout=30) for i in range(8)]
    for _ in range(50):
        runner.make.run(4096, -1.0, _timeout=30)  # dropped at once: the worker reuses those
    for i, k in enumerate(kept):
        assert (k == float(i)).all()
    worker = runner.pid.run(_timeout=30)
    assert len(_arr_segments(worker)) >= len(kept)  # still referenced: still there
    del kept, k
    gc.collect()
    wait_for(lambda: len(_arr_segments(worker)) <= shared.KEEP, 30,
             "the worker to give back what the caller let go of")


def test_memory_kept_for_ever_never_stalls_anyone(user):
    """A Runnable keeps 200 shared inputs and the caller keeps 200 shared results; plain calls
    keep being answered throughout (nothing a reference holds sits in a ring)."""
    runner, _ = user
    mine = []
    theirs = []
    for i in range(200):
        x = runnerlib.shared_array(1024)
        x[:] = i
        mine.append(x)
        assert runner.keep.run(x, _timeout=30) == i + 1
        theirs.append(runner.make.run(1024, float(i), _timeout=30))
        assert runner.size.run(np.ones(16, np.float32), _timeout=30) == 64
    sums = runner.kept_sums.run(_timeout=30)
    assert sums == [1024.0 * i for i in range(200)]
    mine[7][:] = 0  # the worker's kept view is the caller's memory
    assert runner.kept_sums.run(_timeout=30)[7] == 0.0
    assert all((t == float(i)).all() for i, t in enumerate(theirs))
    del mine, theirs, x


def test_batched_calls_join_shared_arrays_and_split_a_shared_result():
    runner = runnerlib.Runner(SharedRows, name="shared-rows", max_batch_size=64,
                              max_latency_ms=50, cpu=1)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        xs = []
        for i in range(32):
            x = runnerlib.shared_array((2, 8))
            x[:] = i
            xs.append(x)

        async def many(xs):
            return await asyncio.gather(*(runner.plus_one.async_run(x, _timeout=60)
                                          for x in xs))

        for _ in range(3):
            outs = asyncio.run(many(xs))
            for i, out in enumerate(outs):
                assert out.shape == (2, 8) and (out == i + 1).all()
                assert shared.block_of(out) is not None  # a view of the batch's shared output
        assert runner.largest_batch.run(_timeout=30) > 2  # calls were joined
        runner.destroy()
        del xs, outs, out


def _killed_caller(runner_name: str, body: str) -> list[str]:
    """Run a caller process of ``runner_name`` that runs ``body`` (with ``r`` its runner) and
    prints READY and its findings; SIGKILL it then, and return the findings."""
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, os, time, runnerlib; sys.path.insert(0, sys.argv[1]);"
         "from ipc import shared; from runtime_runnables import SharedUser;"
         f"r = runnerlib.Runner(SharedUser, name={runner_name!r}, cpu=1);"
         "r.init_client(spawn=False);" + body + "; time.sleep(600)",
         HERE], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        while line and not line.startswith("READY"):  # the module prints at import
            line = child.stdout.readline()
        found = line.split()[1:]
        assert found, "the caller process ended before it was ready"
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        return found
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


def test_a_caller_killed_while_the_worker_keeps_its_array():
    """The worker's view outlives the caller (SIGKILL): it still reads the caller's values,
    and the caller's segment name is removed by the server's sweep of dead clients."""
    runner = runnerlib.Runner(SharedUser, name="shared-user", cpu=1)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        body = ("x = runnerlib.shared_array(1 << 16); x[:] = 2.0;"
                "by_ref = int(r.probe.run(x, _timeout=30)[1] == shared.block_of(x).name);"
                "print('READY', r.keep.run(x, _timeout=30), by_ref, os.getpid(), flush=True)")
        count, by_ref, pid = map(int, _killed_caller("shared-user", body))
        assert count == 1 and by_ref == 1  # the worker keeps a view of the caller's memory
        assert runner.kept_sums.run(_timeout=30) == [2.0 * (1 << 16)]
        wait_for(lambda: not _arr_segments(pid), 60, "the dead caller's segment to go")
        assert runner.kept_sums.run(_timeout=30) == [2.0 * (1 << 16)]  # still readable
        runner.destroy()


def test_a_caller_killed_holding_a_workers_array_leaks_nothing_past_linger(monkeypatch):
    """The dead caller never gives its count back: the worker unlinks the name LINGER after
    it let go (set to 2 s here through the test seam)."""
    monkeypatch.setenv(shared.LINGER_ENV, "2")
    runner = runnerlib.Runner(SharedUser, name="shared-linger", cpu=1)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        body = ("y = r.make.run(1 << 16, 4.0, _timeout=30);"
                "print('READY', shared.block_of(y).name, flush=True)")
        (name,) = _killed_caller("shared-linger", body)
        wait_for(lambda: not os.path.exists(SHM_DIR + name), 60,
                 "the worker to unlink a segment a dead caller held")
        assert (runner.make.run(16, 1.0, _timeout=30) == 1.0).all()
        runner.destroy()


def test_a_worker_killed_while_the_caller_keeps_its_result(user):
    runner, _ = user
    y = runner.make.run(1 << 18, 5.0, _timeout=30)  # 1 MiB: passed on, a shared copy
    worker = runner.pid.run(_timeout=30)
    assert _arr_segments(worker)
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: runner.pid.run(_timeout=30) != worker, 60, "a restarted worker")
    assert (y == 5.0).all()  # the caller's mapping outlives the worker
    wait_for(lambda: not _arr_segments(worker), 60, "the dead worker's segments to go")
    assert (y == 5.0).all()
    # passing it on: its name is gone, so it travels as a copy (in a segment of ours: it is
    # SHARE_ABOVE or larger), and nothing is lost
    name = runner.probe.run(y, _timeout=30)[1]
    assert name != shared.block_of(y).name and parse_name(name).pid == os.getpid()
    np.testing.assert_array_equal(runner.echo.run(y[:8], _timeout=30), np.full(8, 5.0))
    del y


def test_a_shared_array_over_the_budget_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("RUNNERLIB_SHM_BUDGET", "8MiB")
    ok = runnerlib.shared_array((1 << 20,))  # 4 MiB
    with pytest.raises(runnerlib.TransportError, match="over its limit") as err:
        runnerlib.shared_array((1 << 21,))  # 8 MiB more
    assert "RUNNERLIB_SHM_BUDGET" in str(err.value) and "/dev/shm has" not in str(err.value)
    del ok
    gc.collect()
    big = runnerlib.shared_array((3 << 19,))  # 6 MiB: what was let go of is room again
    del big


def test_a_worker_making_a_shared_array_over_its_servers_budget_fails_the_call():
    runner = runnerlib.Runner(SharedUser, name="shared-user", cpu=1)
    with runnerlib.Server([runner], config={"shm_budget": "16MiB"}):
        runner.init_client(spawn=False)
        with pytest.raises(runnerlib.TransportError, match="over its limit"):
            runner.make.run(8 << 20, 1.0, _timeout=30)  # 32 MiB
        assert (runner.make.run(1024, 1.0, _timeout=30) == 1.0).all()  # and it goes on
        runner.destroy()


def test_a_forked_child_sends_inherited_shared_arrays_as_bytes(user):
    runner, _ = user
    x = runnerlib.shared_array(4096)
    x[:] = 9.0
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            child = runnerlib.Runner(SharedUser, name="shared-user", cpu=1)
            child.init_client(spawn=False)
            got = child.probe.run(x, _timeout=30)
            code = 0 if got[1] is None and got[0] == x.nbytes else 2
            child.destroy()
        finally:
            os.write(w, bytes([code]))
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        status = f.read(1)
    os.waitpid(pid, 0)
    assert status == b"\x00"
    # the parent's array and its references are untouched by the child's exit
    assert runner.probe.run(x, _timeout=30)[1] == shared.block_of(x).name
    assert (x == 9.0).all()
    del x


def test_local_runner_passes_the_array_itself():
    runner = runnerlib.Runner(SharedUser, name="shared-local")
    runner.init_local()
    x = runnerlib.shared_array(16)
    x[:] = 1
    assert runner.echo.run(x) is x
    assert (runner.double.run(x) == 2).all()
    runner.destroy()
    del x


def test_threads_passing_and_dropping_shared_arrays_lose_nothing(user):
    """8 threads of one client pass their own shared arrays, get them back, get fresh ones
    from the worker and drop them, for 3 s: every value is right, and afterwards every
    segment has been given back (no count lost to a race between a dying view and a
    receive of the same segment)."""
    import threading
    import time

    runner, _ = user
    worker = runner.pid.run(_timeout=30)
    errors: list[BaseException] = []
    stop = time.monotonic() + 3.0

    def work(k: int) -> None:
        try:
            mine = runnerlib.shared_array((1 << 18,))  # 1 MiB
            mine[:] = k
            while time.monotonic() < stop:
                back = runner.echo.run(mine[k:], _timeout=60)
                assert back[0] == k and np.shares_memory(back, mine)
                fresh = runner.make.run(1 << 16, float(k), _timeout=60)
                assert fresh[0] == k and fresh[-1] == k
                plain = runner.echo.run(np.full(1 << 18, k, np.float32), _timeout=60)
                assert plain[-1] == k  # 1 MiB of plain numpy: a shared copy, sent back
                del back, fresh, plain
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    gc.collect()
    shared.sweep()
    assert all(shared._count(seg) == 0 for seg, _ in shared._idle), "a count was lost"
    wait_for(lambda: len(_arr_segments(worker)) <= shared.KEEP, 30,
             "the worker to give back every segment the threads let go of")
