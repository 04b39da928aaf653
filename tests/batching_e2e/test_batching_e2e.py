"""Adaptive batching end to end: real Server, worker processes and client processes (SPEC 7).

The Runnables (batch_runnables.py) record, per batch, the rows and the client ids they saw;
``history`` hands that record back, so the tests can tell which calls were joined.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import queue
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest
from batch_clients import make_rows
from batch_runnables import batch_runner

import runnerlib
from runnerlib import stats

CTX = mp.get_context("spawn")


def _concurrent_calls(*a):
    from batch_clients import concurrent_calls

    concurrent_calls(*a)


def _kinds_calls(*a):
    from batch_clients import kinds_calls

    kinds_calls(*a)


def run_clients(target, argsets, timeout=60.0):
    """Start one client process per argument tuple, release them together, collect reports."""
    out, ready, go = CTX.Queue(), CTX.Queue(), CTX.Event()
    procs = [CTX.Process(target=target, args=(*args, (ready, go), out)) for args in argsets]
    for p in procs:
        p.start()
    try:
        deadline, attached = time.monotonic() + timeout, 0
        # every client attached, or one failed (and reported on out)
        while attached < len(procs) and out.empty() and time.monotonic() < deadline:
            try:
                ready.get(timeout=0.2)
                attached += 1
            except queue.Empty:
                pass
        go.set()
        return sorted(out.get(timeout=timeout) for _ in procs)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(5)


def gather(coros):
    async def main():
        return await asyncio.gather(*coros, return_exceptions=True)

    return asyncio.run(main())


def history(runner, method=None):
    """The batches recorded since the last call (it clears the record), of ``method``."""
    return [h for h in runner.history.run() if method is None or h["method"] == method]


def of(log, method):
    return [h for h in log if h["method"] == method]


@pytest.fixture
def serve():
    """serve(runner, config=None) -> runner with a client in this process; all torn down."""
    stack = []

    def start(runner, config=None):
        server = runnerlib.Server([runner], config)
        server.__enter__()
        stack.append((server, runner))
        runner.init_client(spawn=False)
        return runner

    yield start
    for server, runner in reversed(stack):
        try:
            runner.destroy()
        finally:
            server.__exit__(None, None, None)


# -- several client processes ------------------------------------------------------------------


def test_batches_join_calls_from_several_client_processes(serve):
    runner = serve(batch_runner("e2e-multi", runnable_init_params={"delay": 0.004},
                                max_batch_size=32, max_latency_ms=200))
    clients, ncalls, concurrency, nrows = 3, 80, 8, 3
    reports = run_clients(_concurrent_calls, [
        ("e2e-multi", c, ncalls, concurrency, nrows) for c in range(1, clients + 1)
    ])
    assert [r[0] for r in reports] == ["ok"] * clients, reports

    batches = history(runner, "rows")
    total_rows = sum(1 + (i % nrows) for i in range(ncalls)) * clients
    assert sum(b["rows"] for b in batches) == total_rows
    assert max(b["rows"] for b in batches) <= 32
    mixed = [b for b in batches if len(b["clients"]) > 1]
    assert mixed, "no batch joined calls of more than one client process"

    snap = stats.snapshot(runner._handle.info)
    assert snap["batches"] >= len(batches)
    assert snap["mean_batch_size"] > 1.0, snap
    assert snap["mean_batch_calls"] > 1.0, snap
    assert snap["batch_calls"] >= clients * ncalls
    assert sum(snap["batch_size_hist"].values()) == snap["batches"]
    assert snap["exec_seconds"] > 0 and snap["batch_wait_seconds"] >= 0
    assert snap["queue_depth"] == 0 and snap["batch_queue_depth"] == 0
    print(f"\nmulti-client: {len(batches)} batches, mean rows {snap['mean_batch_size']:.2f}, "
          f"mean calls {snap['mean_batch_calls']:.2f}, {len(mixed)} batches mixed clients, "
          f"hist {snap['batch_size_hist']}")

    # the same counters through the CLI, from another process
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "runnerlib", "status", "--json"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    mine = [s for s in json.loads(proc.stdout) if s.get("runner") == "e2e-multi"]
    assert mine and mine[0]["batches"] >= len(batches) and mine[0]["mean_batch_size"] > 1


def test_every_payload_kind_batches_across_processes(serve):
    runner = serve(batch_runner("e2e-kinds", runnable_init_params={"delay": 0.002},
                                max_latency_ms=200))
    reports = run_clients(_kinds_calls, [("e2e-kinds", c, 12) for c in (1, 2)])
    assert [r[0] for r in reports] == ["ok", "ok"], reports
    batches = history(runner)
    methods = {"columns", "transpose", "pair", "table", "frame", "listed"}
    assert methods <= {b["method"] for b in batches}
    kinds = {b["kind"] for b in batches if b["method"] == "table"}
    assert kinds == {"Table", "RecordBatch"}  # never joined with each other
    assert any(b["rows"] > 3 for b in batches), "no batch joined more than one call"


# -- sizes -----------------------------------------------------------------------------------


def test_oversize_call_is_split_and_rejoined(serve):
    runner = serve(batch_runner("e2e-oversize", max_batch_size=8))
    x = make_rows(7, 1, 50)
    y = runner.rows.run(x)
    np.testing.assert_array_equal(y[:, :2], x)
    assert [b["rows"] for b in history(runner, "rows")] == [8] * 6 + [2]

    a, b = runner.pair.run(x)  # tuple results, re-joined element-wise
    np.testing.assert_array_equal(a, x + 1)
    np.testing.assert_array_equal(b, x[:, 1] * 10)

    t = np.column_stack([x, x[:, 1]])
    np.testing.assert_array_equal(runner.transpose.run(t), t.T)  # joined back along axis 1
    cols = np.ascontiguousarray(x.T)
    np.testing.assert_array_equal(runner.columns.run(cols), cols * 3)

    table = pa.table({"client": x[:, 0], "value": x[:, 1]})
    out = runner.table.run(table)
    assert out.column("double").to_pylist() == (x[:, 1] * 2).tolist()
    assert all(h["rows"] <= 8 for h in history(runner))


def test_config_file_per_method_max_batch_size(serve, tmp_path):
    path = tmp_path / "runners.yaml"
    path.write_text(
        "runners:\n"
        "  - name: e2e-config\n"
        "    max_batch_size: 64\n"
        "    runnable_method_configs:\n"
        "      sized: {max_batch_size: 3}\n"
    )
    runner = serve(batch_runner("e2e-config", runnable_init_params={"delay": 0.005}),
                   config=str(path))
    xs = [make_rows(1, i, 1) for i in range(40)]
    ys = gather([runner.sized.async_run(x) for x in xs] + [runner.rows.async_run(x) for x in xs])
    for x, y in zip(xs + xs, ys, strict=True):
        np.testing.assert_array_equal(y[:, :2], x)
    log = history(runner)
    sized = [b["rows"] for b in of(log, "sized")]
    assert sum(sized) == 40 and max(sized) <= 3
    assert max(sized) > 1  # it did batch, just not beyond the limit
    rows = [b["rows"] for b in of(log, "rows")]
    assert sum(rows) == 40 and max(rows) <= 64


# -- what may be joined ------------------------------------------------------------------------


def test_mixed_shapes_and_non_batch_arguments_are_batched_apart(serve):
    runner = serve(batch_runner("e2e-mixed", runnable_init_params={"delay": 0.003}))
    xs = [np.full((1 + i % 2, 2 + i % 3), i, dtype=np.int64) for i in range(30)]
    ys = gather([runner.shapes.async_run(x) for x in xs])
    for x, y in zip(xs, ys, strict=True):
        np.testing.assert_array_equal(y, x * 2)
    log = history(runner, "shapes")
    assert all(len(b["widths"]) == 1 for b in log)
    assert sum(b["rows"] for b in log) == sum(len(x) for x in xs)

    floats = [np.full((2, 2), i, dtype=np.float32) for i in range(10)]
    ints = [np.full((2, 2), i, dtype=np.int64) for i in range(10)]
    mixed = [x for pair in zip(floats, ints, strict=True) for x in pair]
    ys = gather([runner.shapes.async_run(x) for x in mixed])
    for x, y in zip(mixed, ys, strict=True):
        assert y.dtype == x.dtype
        np.testing.assert_array_equal(y, x * 2)

    xs = [make_rows(1, i, 2) for i in range(20)]
    factors = [1 + i % 3 for i in range(20)]
    ys = gather([runner.scale.async_run(x, f) for x, f in zip(xs, factors, strict=True)])
    for x, f, y in zip(xs, factors, ys, strict=True):
        np.testing.assert_array_equal(y, x * f)


def test_a_bad_call_fails_alone(serve):
    runner = serve(batch_runner("e2e-bad", runnable_init_params={"delay": 0.003}))
    xs = [make_rows(1, i, 2) for i in range(30)]
    xs[7][:, 1] = -1
    xs[19][0, 1] = -5
    ys = gather([runner.picky.async_run(x) for x in xs])
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if i in (7, 19):
            assert isinstance(y, ValueError) and "negative" in str(y), y
        else:
            np.testing.assert_array_equal(y, x * 2)
    # the worker keeps serving, batches included
    np.testing.assert_array_equal(runner.picky.run(xs[0]), xs[0] * 2)


# -- dispatch ------------------------------------------------------------------------------------


def test_lone_sequential_caller_pays_no_batching_wait(serve):
    runner = serve(batch_runner("e2e-lone", max_latency_ms=2000))
    runner.rows.run(make_rows(1, 0, 1))  # warm up
    t0 = time.monotonic()
    for i in range(20):
        x = make_rows(1, i, 1 + i % 3)
        np.testing.assert_array_equal(runner.rows.run(x)[:, :2], x)
    assert time.monotonic() - t0 < 10.0  # 20 waits of max_latency_ms would be 40 s
    snap = stats.snapshot(runner._handle.info)
    assert snap["batch_wait_seconds"] < 10.0


def test_batching_disabled_runs_every_call_alone(serve, tmp_path):
    path = tmp_path / "runners.yaml"
    path.write_text("runners:\n  e2e-off:\n    batching: {enabled: false}\n")
    runner = serve(batch_runner("e2e-off", runnable_init_params={"delay": 0.003}),
                   config=str(path))
    xs = [make_rows(i, i, 1 + i % 3) for i in range(30)]
    ys = gather([runner.rows.async_run(x) for x in xs])
    for x, y in zip(xs, ys, strict=True):
        np.testing.assert_array_equal(y[:, :2], x)
    batches = history(runner, "rows")
    assert len(batches) == 30 and all(len(b["clients"]) == 1 for b in batches)


def test_two_workers_both_serve_under_load(serve):
    runner = serve(batch_runner("e2e-two", runnable_init_params={"delay": 0.01},
                                workers_per_resource=2, max_batch_size=8))
    reports = run_clients(_concurrent_calls, [("e2e-two", c, 60, 8, 2) for c in (1, 2, 3)])
    assert [r[0] for r in reports] == ["ok"] * 3, reports
    pids = set().union(*(set(r[2]) for r in reports))
    assert len(pids) == 2, pids
    snap = stats.snapshot(runner._handle.info)
    assert len(snap["workers"]) == 2
    assert all(w["batches"] > 0 for w in snap["workers"]), snap["workers"]
    print(f"\ntwo workers: batches per worker {[w['batches'] for w in snap['workers']]}, "
          f"mean rows {snap['mean_batch_size']:.2f}")


# -- overload ------------------------------------------------------------------------------------


def _flood(runner, n):
    return gather([runner.rows.async_run(make_rows(1, i, 1)) for i in range(n)])


def test_overload_reject_fails_fast_and_queue_does_not(serve):
    rejecting = serve(batch_runner("e2e-reject", runnable_init_params={"delay": 0.05},
                                   max_batch_size=4, max_latency_ms=60, on_overload="reject"))
    _flood(rejecting, 2)  # let the model learn what a batch costs
    results = _flood(rejecting, 120)
    rejected = [r for r in results if isinstance(r, runnerlib.RunnerOverloaded)]
    others = [r for r in results if isinstance(r, BaseException) and r not in rejected]
    assert rejected, "a flood past max_latency_ms was never rejected"
    assert not others, others[:3]
    assert len(rejected) < len(results)  # some were served
    rejecting.destroy()

    queueing = serve(batch_runner("e2e-queue", runnable_init_params={"delay": 0.05},
                                  max_batch_size=4, max_latency_ms=60))
    _flood(queueing, 2)
    results = _flood(queueing, 120)
    assert not [r for r in results if isinstance(r, BaseException)]
