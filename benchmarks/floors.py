"""Floors measured in the same run: what no cross-process call path can beat on this host.

- posix_ipc semaphore ping-pong between two processes: one kernel wake-up each way, the floor a
  blocking call path pays; measured with the two processes pinned to different CPUs (when the
  host has two) and pinned to the same CPU.
- shared-memory busy-poll ping-pong between two processes pinned to two different CPUs, both
  spinning on counters in one shared anonymous mapping: the physical limit of a cross-CPU round
  trip from Python (no kernel on the path; cache lines moving between the CPUs).
- numpy.copyto of 64 MiB into a warm destination: the memory bandwidth any copy pays.
- the image's two copies between two CPUs: one process copies float32[1,3,224,224] into a
  shared mapping, a helper on the other CPU (busy-polling) copies that into a second one and
  answers; what an echo of the image pays with no call path at all, since the method's
  answer is made from memory another CPU has just written (its lines move between caches).
- numpy.multiply(x, 2, out=y) of 64 MiB into a warm destination: the pass the shared_array
  method (`double`) makes itself, in one process, with no runnerlib (the floor of that row).
- Python speed: a fixed pure-Python loop (`sum(range(1000))`), timed like the rest. A small
  call is Python on both sides, so it moves with this figure; on shared machines it drifted
  by 2x within an hour, while the wake-up floors stayed put (docs/design.md).
"""

from __future__ import annotations

import functools
import mmap
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


# Byte offsets of the two counters in the shared page: each on its own 64-byte cache line.
_PING_OFF, _PONG_OFF, _STOP_OFF = 0, 64, 128
_SPIN_LIMIT_S = 10.0  # a side that spins this long without an answer gives up


IMAGE_SHAPE = (1, 3, 224, 224)
_DATA_OFF = mmap.PAGESIZE  # copy_pingpong's buffers start after the page of counters


def _busy_pong(buf: mmap.mmap, count: int, cpu: int, copy_bytes: int = 0) -> None:
    """Helper (forked): spin until ping moves, answer on pong; `count` times. With
    `copy_bytes`, copy buffer 1 into buffer 2 (after the counters' page) before each answer."""
    os.sched_setaffinity(0, {cpu})
    words = memoryview(buf).cast("q")
    src = np.frombuffer(buf, dtype=np.uint8, count=copy_bytes, offset=_DATA_OFF)
    dst = np.frombuffer(buf, dtype=np.uint8, count=copy_bytes, offset=_DATA_OFF + copy_bytes)
    ping, pong, stop = _PING_OFF // 8, _PONG_OFF // 8, _STOP_OFF // 8
    clock = time.monotonic
    words[pong] = -1  # ready
    try:
        for i in range(count):
            deadline = None
            while words[ping] != i:
                if words[stop]:
                    return
                if deadline is None:
                    deadline = clock() + _SPIN_LIMIT_S
                elif clock() > deadline:
                    return
            if copy_bytes:
                np.copyto(dst, src)
            words[pong] = i
    finally:
        del src, dst
        words.release()


def _pingpong(buf: mmap.mmap, iterations: int, warmup: int, cpus: tuple[int, int],
              before=None, copy_bytes: int = 0) -> dict:
    """Round trip of: ``before()``, store ping=i, spin until pong == i, against a forked
    `_busy_pong` helper on the other CPU; per-round times in ns, summarized."""
    words = memoryview(buf).cast("q")
    ping, pong, stop = _PING_OFF // 8, _PONG_OFF // 8, _STOP_OFF // 8
    words[ping] = words[pong] = -2
    saved = os.sched_getaffinity(0)
    ctx = mp.get_context("fork")
    helper = ctx.Process(target=_busy_pong, daemon=True,
                         args=(buf, iterations + warmup, cpus[1], copy_bytes))
    out = np.empty(iterations, dtype=np.int64)
    try:
        os.sched_setaffinity(0, {cpus[0]})
        helper.start()
        deadline = time.monotonic() + _WAIT_S
        while words[pong] != -1:  # the helper is up and pinned
            if time.monotonic() > deadline or not helper.is_alive():
                raise TimeoutError("busy-poll helper did not start")
            time.sleep(0.001)
        clock = time.perf_counter_ns
        limit = int(_SPIN_LIMIT_S * 1e9)
        for i in range(warmup + iterations):
            t0 = clock()
            if before is not None:
                before()
            words[ping] = i
            while words[pong] != i:
                if clock() - t0 > limit:
                    raise TimeoutError(f"busy-poll helper stopped answering at round {i}")
            if i >= warmup:
                out[i - warmup] = clock() - t0
    finally:
        words[stop] = 1
        os.sched_setaffinity(0, saved)
        helper.join(_WAIT_S)
        if helper.is_alive():
            helper.kill()
            helper.join()
        words.release()
    res = summarize_ns(out)
    res["cpus"] = list(cpus)
    return res


def busy_pingpong(iterations: int, warmup: int, cpus: tuple[int, int]) -> dict:
    """Round trip of: store ping=i, spin until pong == i; the helper spins on ping and answers.

    Both processes spin (no sleep, no yield) and are pinned to different CPUs; the mapping is
    anonymous and shared with a forked helper, so nothing is left in /dev/shm.
    """
    buf = mmap.mmap(-1, mmap.PAGESIZE)  # MAP_SHARED | MAP_ANONYMOUS: shared with the fork
    try:
        return _pingpong(buf, iterations, warmup, cpus)
    finally:
        buf.close()


def copy_pingpong(iterations: int, warmup: int, cpus: tuple[int, int],
                  shape: tuple[int, ...] = IMAGE_SHAPE) -> dict:
    """The busy-poll round trip with the image's two copies: a private float32 array of
    ``shape`` copied into shared buffer 1 first, and the helper, on the other CPU, copying
    buffer 1 into buffer 2 before it answers (nobody reads buffer 2 back, as the suite's
    caller never reads the echoed image). Anonymous shared mapping: nothing in /dev/shm."""
    x = np.random.default_rng(3).random(shape, dtype=np.float32)
    buf = mmap.mmap(-1, _DATA_OFF + 2 * x.nbytes)  # MAP_SHARED | MAP_ANONYMOUS
    dst = np.frombuffer(buf, dtype=np.float32, count=x.size, offset=_DATA_OFF).reshape(shape)
    copy_in = functools.partial(np.copyto, dst, x)
    try:
        res = _pingpong(buf, iterations, warmup, cpus, before=copy_in, copy_bytes=x.nbytes)
    finally:
        del copy_in, dst  # the mapping's exports, before it closes
        buf.close()
    res["bytes"] = x.nbytes
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


def double_pass(reps: int) -> dict:
    """numpy.multiply(x, 2, out=y) of 64 MiB float32, warm; median ms (the method's own pass
    in the shared_array row that writes 2*x: no call can cost less than this)."""
    src = np.random.default_rng(2).random(MIB64 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.multiply(src, 2, out=dst)  # warm: fault the destination pages in before timing
    np.multiply(src, 2, out=dst)
    times = np.empty(reps, dtype=np.int64)
    for i in range(reps):
        t0 = time.perf_counter_ns()
        np.multiply(src, 2, out=dst)
        times[i] = time.perf_counter_ns() - t0
    res = summarize_ns(times)
    res["p50_ms"] = res["p50_us"] / 1e3
    return res


def python_speed(reps: int) -> dict:
    """``sum(range(1000))`` in this process: how fast the machine runs Python right now."""
    loop = range(1000)
    for _ in range(200):  # warm
        sum(loop)
    times = np.empty(reps, dtype=np.int64)
    for i in range(reps):
        t0 = time.perf_counter_ns()
        sum(loop)
        times[i] = time.perf_counter_ns() - t0
    return summarize_ns(times)


def run(plan, progress) -> dict:
    """Scenario entry point: both semaphore floors, the busy-poll floor, the copy bandwidth."""
    usable = sorted(os.sched_getaffinity(0))
    res: dict = {}
    if len(usable) >= 2:
        progress("semaphore ping-pong, different CPUs")
        res["sem_pingpong_diff_cpu"] = sem_pingpong(
            plan.pingpong_iters, plan.pingpong_warmup, (usable[0], usable[1])
        )
        progress("busy-poll ping-pong, different CPUs")
        res["busy_pingpong_diff_cpu"] = busy_pingpong(
            plan.pingpong_iters, plan.pingpong_warmup, (usable[0], usable[1])
        )
        progress("the image's two copies, different CPUs")
        res["image_copies_diff_cpu"] = copy_pingpong(
            plan.image_copy_iters, plan.image_copy_warmup, (usable[0], usable[1])
        )
    else:
        res["sem_pingpong_diff_cpu"] = None
        res["busy_pingpong_diff_cpu"] = None
        res["image_copies_diff_cpu"] = None
    progress("semaphore ping-pong, same CPU")
    res["sem_pingpong_same_cpu"] = sem_pingpong(
        plan.pingpong_iters, plan.pingpong_warmup, (usable[0], usable[0])
    )
    progress("numpy.copyto 64 MiB")
    res["copyto_64MiB"] = copyto_bandwidth(plan.copyto_reps)
    progress("Python speed: sum(range(1000))")
    res["python_loop"] = python_speed(plan.pingpong_iters)
    progress("numpy.multiply(x, 2, out=y) 64 MiB")
    res["double_64MiB"] = double_pass(plan.copyto_reps)
    return res
