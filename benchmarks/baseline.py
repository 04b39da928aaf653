"""Baseline: the same calls through a plain multiprocessing.Pool(1) (pickle over pipes).

This is what a user gets without runnerlib or BentoML: `pool.apply(identity, (x,))`, the
array pickled both ways through the pool's pipes. The spawn start method is used so the pool
never inherits threads or mappings of the benchmark process.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import numpy as np

from .measure import PAYLOADS, make_payload, summarize_ns, time_calls


def identity(x):
    """The pool worker's method: return the argument, like the runnerlib Echo runnable."""
    return x


def sequential(pool, plan, progress) -> dict:
    out = {}
    for name in PAYLOADS:
        n, warm = plan.seq_iters[name], plan.seq_warmup[name]
        progress(f"mp.Pool apply {name} x{n}")
        x = make_payload(name)
        got = pool.apply(identity, (x,))
        if not np.array_equal(got, x):
            raise AssertionError(f"pool returned a different array for {name}")
        del got
        out[name] = summarize_ns(time_calls(lambda a: pool.apply(identity, (a,)), x, n, warm))
    return out


def throughput(pool, in_flight: int, duration: float) -> dict:
    """`in_flight` outstanding apply_async calls from one process for `duration` seconds."""
    x = make_payload("f32_1x16")
    slots = threading.BoundedSemaphore(in_flight)
    lat: list[int] = []
    errors: list[BaseException] = []
    clock = time.perf_counter_ns

    def done(_r, t0):
        lat.append(clock() - t0)
        slots.release()

    def failed(e):
        errors.append(e)
        slots.release()

    t_start = clock()
    deadline = t_start + int(duration * 1e9)
    while clock() < deadline:
        if not slots.acquire(timeout=1.0):
            continue
        t0 = clock()
        pool.apply_async(
            identity, (x,), callback=lambda r, t0=t0: done(r, t0), error_callback=failed
        )
    for _ in range(in_flight):  # drain: every outstanding call must come back
        if not slots.acquire(timeout=30):
            raise TimeoutError("mp.Pool calls did not come back within 30 s")
    elapsed = (clock() - t_start) / 1e9
    res = summarize_ns(lat)
    res.update(
        callers=in_flight,
        client_processes=1,
        requests=len(lat),
        errors=len(errors),
        elapsed_s=elapsed,
        req_s=len(lat) / elapsed,
    )
    return res


def run(plan, progress) -> dict:
    """Scenario entry point: sequential round trips per payload, then 64 calls in flight."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        pool.apply(identity, (None,))  # wait for the worker to start
        res = {"sequential": sequential(pool, plan, progress)}
        progress(f"mp.Pool {plan.callers} calls in flight, {plan.pool_duration:.1f} s")
        res["throughput"] = throughput(pool, plan.callers, plan.pool_duration)
    return res
