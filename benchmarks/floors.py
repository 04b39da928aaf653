"""Floors measured in the same run: what no cross-process call path can beat on this host.

- posix_ipc semaphore ping-pong between two processes: one kernel wake-up each way, the floor a
  blocking call path pays; measured with the two processes pinned to different CPUs (when the
  host has two) and pinned to the same CPU.
- numpy.copyto of 64 MiB into a warm destination: the memory bandwidth any copy pays.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import time

import numpy as np

from .measure import MIB64, summarize_ns

SEM_PREFIX = "/rlbench-"  # /dev/shm/sem.rlbench-<pid>-<token>; the suite sweeps leftovers by pid
_WAIT_S = 10.0


def sem_names(tag: str) -> tuple[str, str]:
    token = secrets.token_hex(4)
    base = f"{SEM_PREFIX}{os.getpid()}-{token}-{tag}"
    return base + "-ping", base + "-pong"


def _pong(ping_name: str, pong_name: str, count: int, cpu: int | None) -> None:
    """Helper process: answer `count` pings, pinned to `cpu`."""
    import posix_ipc

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    ping = posix_ipc.Semaphore(ping_name)
    pong = posix_ipc.Semaphore(pong_name)
    try:
        for _ in range(count):
            ping.acquire(_WAIT_S)
            pong.release()
    finally:
        ping.close()
        pong.close()


def sem_pingpong(iterations: int, warmup: int, cpus: tuple[int, int] | None) -> dict:
    """Round trip of release(ping) -> helper acquire/release(pong) -> acquire(pong)."""
    import posix_ipc

    ping_name, pong_name = sem_names("diff" if cpus and cpus[0] != cpus[1] else "same")
    ping = posix_ipc.Semaphore(ping_name, posix_ipc.O_CREX, 0o600, 0)
    pong = posix_ipc.Semaphore(pong_name, posix_ipc.O_CREX, 0o600, 0)
    saved = os.sched_getaffinity(0)
    ctx = mp.get_context("spawn")
    helper = ctx.Process(
        target=_pong,
        args=(ping_name, pong_name, iterations + warmup, cpus[1] if cpus else None),
        daemon=True,
    )
    try:
        if cpus:
            os.sched_setaffinity(0, {cpus[0]})
        helper.start()
        clock = time.perf_counter_ns
        out = np.empty(iterations, dtype=np.int64)
        for i in range(warmup + iterations):
            t0 = clock()
            ping.release()
            pong.acquire(_WAIT_S)
            if i >= warmup:
                out[i - warmup] = clock() - t0
        helper.join(_WAIT_S)
    finally:
        os.sched_setaffinity(0, saved)
        if helper.is_alive():
            helper.kill()
            helper.join()
        for s in (ping, pong):
            s.close()
            try:
                s.unlink()
            except posix_ipc.ExistentialError:
                pass
    res = summarize_ns(out)
    res["cpus"] = list(cpus) if cpus else None
    return res


def copyto_bandwidth(reps: int) -> dict:
    """One numpy.copyto of 64 MiB, warm source and destination; median ms and GB/s."""
    src = np.random.default_rng(1).random(MIB64 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # warm: fault the destination pages in before timing
    np.copyto(dst, src)
    times = np.empty(reps, dtype=np.int64)
    for i in range(reps):
        t0 = time.perf_counter_ns()
        np.copyto(dst, src)
        times[i] = time.perf_counter_ns() - t0
    res = summarize_ns(times)
    res["bytes"] = MIB64
    res["p50_ms"] = res["p50_us"] / 1e3
    res["gb_s"] = MIB64 / (res["p50_us"] * 1e-6) / 1e9
    return res


def run(plan, progress) -> dict:
    """Scenario entry point: both semaphore floors and the copy bandwidth."""
    usable = sorted(os.sched_getaffinity(0))
    res: dict = {}
    if len(usable) >= 2:
        progress("semaphore ping-pong, different CPUs")
        res["sem_pingpong_diff_cpu"] = sem_pingpong(
            plan.pingpong_iters, plan.pingpong_warmup, (usable[0], usable[1])
        )
    else:
        res["sem_pingpong_diff_cpu"] = None
    progress("semaphore ping-pong, same CPU")
    res["sem_pingpong_same_cpu"] = sem_pingpong(
        plan.pingpong_iters, plan.pingpong_warmup, (usable[0], usable[0])
    )
    progress("numpy.copyto 64 MiB")
    res["copyto_64MiB"] = copyto_bandwidth(plan.copyto_reps)
    return res
