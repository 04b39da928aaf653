"""Calls across processes: real worker processes over real shared memory (SPEC 3, 6, 8)."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
import uvloop
from runnables import BrokenInit, Echo, Other, echo_runner

import runnerlib
from runnerlib import registry

CTX = mp.get_context("spawn")


@pytest.fixture
def echo():
    runner = echo_runner("echo")
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        yield runner
        runner.destroy()


def test_round_trip_small_array_is_readonly_view(echo):
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    y = echo.echo.run(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(x, y)
    assert not y.flags.writeable


@pytest.mark.parametrize(
    "value",
    [
        np.arange(12, dtype=np.int8).reshape(3, 4),
        np.ones((2, 3, 4), dtype=np.float64, order="F"),
        np.arange(20, dtype=np.uint32)[::3],
        np.array([True, False, True]),
        np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
        np.zeros((0, 5), dtype=np.float16),
        np.float32(3.5) * np.ones(()),
    ],
    ids=["int8", "f-order", "strided", "bool", "complex", "empty", "0-d"],
)
def test_every_array_kind(echo, value):
    y = echo.echo.run(value)
    assert y.dtype == value.dtype and y.shape == value.shape
    np.testing.assert_array_equal(y, value)


def test_python_values_tables_and_composites(echo):
    table = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    batch = table.to_batches()[0]
    value = {
        "none": None,
        "flag": True,
        "n": -7,
        "f": 2.5,
        "s": "héllo",
        "b": b"\x00\x01",
        "nested": [1, (2, 3), {"k": np.arange(3)}],
        "pair": (np.ones(2), "tag"),
    }
    assert echo.echo.run(table).equals(table)
    assert isinstance(echo.echo.run(batch), pa.RecordBatch)
    out = echo.echo.run(value)
    assert out["pair"][1] == "tag" and isinstance(out["pair"], tuple)
    assert isinstance(out["nested"][1], tuple)
    np.testing.assert_array_equal(out["nested"][2]["k"], np.arange(3))
    assert {k: out[k] for k in ("none", "flag", "n", "f", "s", "b")} == {
        k: value[k] for k in ("none", "flag", "n", "f", "s", "b")
    }


def test_dataframe_and_pickled_objects(echo):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": [1.0, 2.0], "b": ["u", "v"]})
    pd.testing.assert_frame_equal(echo.echo.run(df), df)
    from fractions import Fraction

    assert echo.echo.run(Fraction(1, 3)) == Fraction(1, 3)


def test_args_and_kwargs(echo):
    args, kwargs = echo.echo.run(1, "two", three=np.arange(3), four=None)
    assert args == (1, "two")
    assert kwargs["four"] is None
    np.testing.assert_array_equal(kwargs["three"], np.arange(3))


def test_init_params_reach_the_worker():
    runner = runnerlib.Runner(Echo, name="scaled", runnable_init_params={"scale": 3.0}, cpu=1)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        assert runner.scaled.run(2.0) == 6.0
        runner.destroy()


def test_large_array_round_trip(echo):
    x = np.random.default_rng(0).standard_normal(8 << 20 >> 2).astype(np.float32)
    y = echo.echo.run(x)
    np.testing.assert_array_equal(x, y)


def test_payload_larger_than_the_ring_goes_through(monkeypatch):
    from runnerlib._shm import client, supervisor

    monkeypatch.setattr(supervisor, "REQUEST_RING_BYTES", 1 << 20)
    monkeypatch.setattr(client, "CHANNEL_RING_BYTES", 1 << 20)
    runner = echo_runner("tiny-ring")
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        x = np.arange(1 << 20, dtype=np.int64)  # 8 MiB through a 1 MiB ring, both ways
        for _ in range(3):
            np.testing.assert_array_equal(runner.echo.run(x), x)
        runner.destroy()


def test_unsupported_argument_fails_at_call_site():
    runner = runnerlib.Runner(Echo, name="nopickle", cpu=1)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        runner._handle.allow_pickle = False
        with pytest.raises(TypeError, match="support"):
            runner.echo.run(object())
        assert runner.echo.run(5) == 5  # nothing was lost or wedged
        runner.destroy()


def test_remote_exceptions_keep_type_and_traceback(echo):
    with pytest.raises(ValueError, match="bad input") as info:
        echo.raise_value_error.run("bad input")
    assert "Remote traceback" in str(info.value) and "raise_value_error" in str(info.value)
    with pytest.raises(runnerlib.RemoteError, match="CustomError: custom") as info2:
        echo.raise_custom.run("custom")
    assert info2.value.remote_type.endswith("CustomError")
    assert echo.echo.run(1) == 1  # the worker keeps serving


def test_unencodable_result_is_an_error_not_a_hang(echo):
    with pytest.raises(TypeError):
        echo.unsupported_result.run()
    assert echo.echo.run(2) == 2


def test_runnable_init_error_fails_start():
    runner = runnerlib.Runner(BrokenInit, name="broken", cpu=1)
    server = runnerlib.Server([runner])
    with pytest.raises(ValueError, match="model file missing"):
        server.start()
    assert registry.find("broken") is None


def test_async_run_on_asyncio_and_uvloop(echo):
    async def main():
        xs = [np.full((1, 4), i, dtype=np.float32) for i in range(50)]
        ys = await asyncio.gather(*(echo.echo.async_run(x) for x in xs))
        for x, y in zip(xs, ys, strict=True):
            np.testing.assert_array_equal(x, y)
        assert await echo.async_double.async_run(21) == 42
        return True

    assert asyncio.run(main())
    assert uvloop.run(main())


def test_async_run_does_not_block_the_loop(echo):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.ensure_future(ticker())
        await echo.sleep.async_run(0.5)
        t.cancel()
        return ticks

    assert asyncio.run(main()) >= 10


def test_streams_from_generators(echo):
    async def main():
        got = [i async for i in echo.count.async_stream(5)]
        got_async = [i async for i in echo.async_count.async_stream(4)]
        return got, got_async

    assert asyncio.run(main()) == ([0, 1, 2, 3, 4], [0, 1, 2, 3])
    assert echo.count.run(3) == [0, 1, 2]


def test_many_threads_at_once(echo):
    errors = []

    def worker(k):
        try:
            for i in range(200):
                x = np.full(3, k * 1000 + i)
                if not np.array_equal(echo.echo.run(x), x):
                    errors.append((k, i))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_per_call_timeout(echo):
    with pytest.raises(runnerlib.RunnerTimeout):
        echo.sleep.run(3, _timeout=0.2)
    with pytest.raises(TimeoutError):  # RunnerTimeout is a TimeoutError
        echo.sleep.run(3, _timeout=0.2)
    # the late answers are discarded, later calls get their own answers
    assert echo.echo.run("after") == "after"


def test_async_per_call_timeouts(echo):
    """Each awaited call keeps its own deadline (one timer per channel serves them all): the
    calls with short timeouts fail with RunnerTimeout long before the worker could answer
    them, a call with a long timeout on the same loop still gets its answer, and the loop's
    next calls get theirs."""

    async def main():
        t0 = time.monotonic()
        failed_at = []

        async def short(timeout):
            try:
                await echo.sleep.async_run(2, _timeout=timeout)
            except runnerlib.RunnerTimeout:
                failed_at.append(time.monotonic() - t0)
                return "timed out"
            return "answered"

        results = await asyncio.gather(short(0.2), short(0.4), short(0.6),
                                       echo.sleep.async_run(0.1, _timeout=60))
        after = await echo.echo.async_run("after")
        return results, failed_at, after

    results, failed_at, after = asyncio.run(main())
    assert results[:3] == ["timed out"] * 3
    assert results[3] == 0.1  # ran after the first sleep; the expired calls were skipped
    assert len(failed_at) == 3 and max(failed_at) < 1.9  # before the first sleep ended
    assert after == "after"


def test_several_client_processes():
    runner = echo_runner("multi")
    with runnerlib.Server([runner]):
        out = CTX.Queue()
        procs = [CTX.Process(target=_call_many, args=("multi", 300, s, out)) for s in range(3)]
        procs += [CTX.Process(target=_call_async, args=("multi", 50, 8, 9, out))]
        for p in procs:
            p.start()
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
        assert all(r[0] == "ok" for r in results), results


@pytest.mark.parametrize("pure_side", ["workers", "clients"])
def test_c_and_pure_python_rings_interoperate(monkeypatch, pure_side):
    """Processes with the C ring paths (ipc._fastring) and processes without them
    (RUNNERLIB_PURE_PYTHON=1) share the same rings: one byte layout, one lock protocol."""
    from ipc import ring as ring_module

    if ring_module._fast is None:
        pytest.skip("the C extension is not built: every process is pure Python already")
    runner = echo_runner(f"mixed-{pure_side}")
    if pure_side == "workers":
        monkeypatch.setenv("RUNNERLIB_PURE_PYTHON", "1")  # inherited by the workers
    with runnerlib.Server([runner]):
        if pure_side == "workers":
            monkeypatch.delenv("RUNNERLIB_PURE_PYTHON")
        else:
            monkeypatch.setenv("RUNNERLIB_PURE_PYTHON", "1")  # inherited by the clients
        out = CTX.Queue()
        procs = [CTX.Process(target=_call_many, args=(runner.name, 200, s, out)) for s in range(2)]
        procs += [CTX.Process(target=_call_async, args=(runner.name, 40, 8, 5, out))]
        for p in procs:
            p.start()
        runner.init_client(spawn=False)  # this process: the C paths
        try:
            x = np.arange(64, dtype=np.float32).reshape(4, 16)
            for _ in range(200):
                np.testing.assert_array_equal(runner.echo.run(x), x)
        finally:
            runner.destroy()
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
        assert all(r[0] == "ok" for r in results), results


def _call_many(*a):
    from clients import call_many

    call_many(*a)


def _call_async(*a):
    from clients import call_async_many

    call_async_many(*a)


def test_several_workers_share_the_load():
    runner = runnerlib.Runner(Echo, name="two-workers", cpu=2)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        assert runner.scheduled_worker_count == 2

        async def main():
            return await asyncio.gather(*(runner.sleep_pid.async_run(0.5) for _ in range(4)))

        pids = set(asyncio.run(main()))
        runner.destroy()
    # while one worker sleeps, the other takes the waiting calls
    assert len(pids) == 2


def test_workers_are_pinned_and_env_set_before_import():
    runner = runnerlib.Runner(Echo, name="pinned", cpu=1)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        env = runner.environment.run()
        runner.destroy()
    assert env["at_import"]["CUDA_VISIBLE_DEVICES"] == "-1"
    assert env["at_import"]["OMP_NUM_THREADS"] == "1"
    assert len(env["affinity"]) >= 1
    assert set(env["affinity"]) <= os.sched_getaffinity(0)


def test_gpu_workers_get_their_own_device_before_import(monkeypatch):
    """GPU scheduling across real processes, with a fake NVML of two GPUs (SPEC 5)."""
    from runnables import GpuEcho

    from runnerlib import resources

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with resources.use_nvml(resources.FakeNvml(2)):
        runner = runnerlib.Runner(GpuEcho, name="gpu-echo", nvidia_gpu=2)
        with runnerlib.Server([runner]):
            runner.init_client(spawn=False)
            assert runner.scheduled_worker_count == 2

            async def main():
                return await asyncio.gather(*(runner.environment.async_run(0.5) for _ in range(4)))

            seen = {env["CUDA_VISIBLE_DEVICES"] for env in asyncio.run(main())}
            runner.destroy()
    # both workers answered, each having imported the module seeing only its own GPU
    assert seen == {"0", "1"}


def test_workers_of_several_runners_get_disjoint_cpus():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs at least 2 CPUs to show disjoint pinning")
    a = echo_runner("cpu-a", cpu=1)
    b = echo_runner("cpu-b", cpu=1)
    with runnerlib.Server([a, b]):
        a.init_client(spawn=False)
        b.init_client(spawn=False)
        cpus_a = a.environment.run()["affinity"]
        cpus_b = b.environment.run()["affinity"]
        a.destroy()
        b.destroy()
    assert len(cpus_a) == 1 and len(cpus_b) == 1  # cpu=1: one CPU each
    assert set(cpus_a).isdisjoint(cpus_b)


def test_several_runners_per_server():
    a = echo_runner("first")
    b = runnerlib.Runner(Other, name="second", cpu=1)
    with runnerlib.Server([a, b]):
        a.init_client(spawn=False)
        b.init_client(spawn=False)
        assert a.echo.run(1) == 1 and b.run(2) == 2
        a.destroy()
        b.destroy()


def test_duplicate_names_in_one_server_are_rejected():
    with pytest.raises(ValueError, match="unique"):
        runnerlib.Server([echo_runner("dup"), echo_runner("dup")])


def test_spawn_false_without_server_is_a_clear_error():
    runner = echo_runner("nobody-serves-me")
    with pytest.raises(runnerlib.RunnerError, match="no server"):
        runner.init_client(spawn=False)


def test_init_client_spawns_an_embedded_server():
    runner = echo_runner("embedded")
    runner.init_client()
    try:
        assert runner.echo.run(3) == 3
        assert asyncio.run(runner.runner_handle_is_ready(5))
        info = registry.find("embedded")
        assert info is not None and info.server_pid == os.getpid()
    finally:
        runner.destroy()
    assert registry.find("embedded") is None


def test_racing_spawners_end_with_one_server():
    out = CTX.Queue()
    go = CTX.Event()
    from clients import spawn_and_report

    procs = [CTX.Process(target=spawn_and_report, args=("race", go, out)) for _ in range(2)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    go.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert results[0][1] == results[1][1], results  # same server pid
    assert results[0][2] == results[1][2]  # served by the same worker


def test_attaching_a_different_runnable_under_the_same_name_fails():
    runner = echo_runner("taken")
    with runnerlib.Server([runner]):
        intruder = runnerlib.Runner(Other, name="taken")
        with pytest.raises(runnerlib.RunnerError, match="Runnable"):
            intruder.init_client()


def test_killed_worker_fails_its_calls_fast_and_restarts():
    runner = echo_runner("killme")
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        victim = runner.pid.run()
        result = {}

        def call():
            t0 = time.monotonic()
            try:
                runner.sleep.run(30)
            except Exception as exc:
                result["exc"] = exc
            result["elapsed"] = time.monotonic() - t0

        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.5)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        t.join(10)
        assert isinstance(result.get("exc"), runnerlib.WorkerDied), result
        assert time.monotonic() - killed_at < 2.5  # WorkerDied within 2 s of the death
        deadline = time.monotonic() + 30
        while True:  # the restarted worker serves again
            try:
                assert runner.echo.run("again", _timeout=5) == "again"
                break
            except runnerlib.WorkerDied:
                assert time.monotonic() < deadline
        assert runner.pid.run() != victim
        runner.destroy()


def test_queued_calls_survive_a_worker_death():
    runner = echo_runner("queued")
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        victim = runner.pid.run()

        async def main():
            slow = asyncio.ensure_future(runner.sleep.async_run(30))
            await asyncio.sleep(0.3)
            queued = [asyncio.ensure_future(runner.echo.async_run(i)) for i in range(5)]
            await asyncio.sleep(0.3)
            os.kill(victim, signal.SIGKILL)
            with pytest.raises(runnerlib.WorkerDied):
                await slow
            return await asyncio.gather(*queued)

        assert asyncio.run(main()) == [0, 1, 2, 3, 4]
        runner.destroy()


def test_killed_client_is_reclaimed():
    from runnerlib import stats

    runner = echo_runner("victim-client")
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        assert runner.echo.run(0) == 0  # this thread's channel is open
        ready = CTX.Event()
        from clients import hang_in_call

        p = CTX.Process(target=hang_in_call, args=("victim-client", ready))
        p.start()
        assert ready.wait(60)
        info = registry.find("victim-client")

        def clients():
            return stats.snapshot(info)["clients"]

        deadline = time.monotonic() + 30
        while clients() < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        deadline = time.monotonic() + 30
        while clients() > 1:
            assert time.monotonic() < deadline, "dead client's channel was not reclaimed"
            time.sleep(0.1)
        assert runner.echo.run("still here") == "still here"
        runner.destroy()


def test_a_stopped_server_leaves_no_file_descriptor_open():
    import gc

    runner = echo_runner("fds")
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        server = runnerlib.Server([runner])
        server.start()
        server.stop()
        del server
        gc.collect()
    # a leak stays; an fd still closing (a worker's output pipe at EOF) goes within seconds
    deadline = time.monotonic() + 30
    while set(os.listdir("/proc/self/fd")) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    left = {}
    for fd in set(os.listdir("/proc/self/fd")) - before:
        try:
            left[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # closed meanwhile
    assert not left, f"descriptors left open: {left}"


def test_stop_drains_in_flight_calls():
    runner = echo_runner("drain")
    server = runnerlib.Server([runner])
    server.start()
    runner.init_client(spawn=False)
    result = {}

    def call():
        result["value"] = runner.sleep.run(0.5)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.2)
    server.stop()
    t.join(10)
    assert result == {"value": 0.5}
    assert asyncio.run(runner.runner_handle_is_ready(0.5)) is False  # no worker can answer
    with pytest.raises(runnerlib.RunnerError):
        runner.echo.run(1, _timeout=2)
    runner.destroy()


def test_runnable_in_a_guarded_main_script(tmp_path):
    from clients import main_guarded_script

    out = subprocess.run(
        [sys.executable, main_guarded_script(), "square-script"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.returncode == 0, out.stderr
    assert "RESULT [0, 1, 4, 9]" in out.stdout


def test_stale_segments_are_removed_by_cleanup():
    here = os.path.dirname(__file__)
    code = (
        f"import os, numpy as np, runnerlib, sys; sys.path.insert(0, {here!r});"
        "from runnables import echo_runner; r = echo_runner('stale');"
        "s = runnerlib.Server([r]); s.start(); r.init_client(spawn=False);"
        "print('up', r.pid.run(), os.getpid(), flush=True); os.kill(os.getpid(), 9)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert "up" in out.stdout, out.stderr
    worker_pid, pid = map(int, out.stdout.split()[-2:])

    def left():
        return [n for n in os.listdir("/dev/shm") if n.startswith(f"rl.{pid}.")]

    assert left(), "the killed server should have left its segments"
    cleaned = subprocess.run([sys.executable, "-m", "runnerlib", "cleanup"],
                             capture_output=True, text=True, timeout=60)
    assert cleaned.returncode == 0, cleaned.stderr
    assert left() == []
    deadline = time.monotonic() + 10
    while registry.pid_alive(worker_pid):  # the orphaned worker notices and exits
        assert time.monotonic() < deadline, "a worker outlived its killed server"
        time.sleep(0.1)


def test_killed_worker_fails_every_call_of_a_coalesced_record():
    """Concurrent async calls of one loop travel in one record; a worker that dies holding
    it fails all of them with WorkerDied, promptly."""
    from runnerlib import stats

    runner = echo_runner("coalesced")
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        info = registry.find("coalesced")

        def worker_pid():
            w = stats.snapshot(info)["workers"][0]
            return w["pid"] if w["state"] == "ready" else None

        async def main():
            first = runner.pid.run()
            calls = [asyncio.ensure_future(runner.sleep.async_run(30)) for _ in range(4)]
            await asyncio.sleep(0.5)  # call 0 runs; calls 1-3 wait in one record
            os.kill(first, signal.SIGKILL)
            with pytest.raises(runnerlib.WorkerDied):
                await asyncio.wait_for(calls[0], 10)
            deadline = time.monotonic() + 60
            while worker_pid() in (None, first):  # the restarted worker takes the record
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            killed_at = time.monotonic()
            os.kill(worker_pid(), signal.SIGKILL)
            outcomes = await asyncio.wait_for(
                asyncio.gather(*calls[1:], return_exceptions=True), 10)
            return outcomes, time.monotonic() - killed_at

        outcomes, elapsed = asyncio.run(main())
        assert all(isinstance(o, runnerlib.WorkerDied) for o in outcomes), outcomes
        assert elapsed < 2.5  # within 2 s of the death, with slack for a loaded machine
        assert runner.echo.run("after", _timeout=30) == "after"
        runner.destroy()
