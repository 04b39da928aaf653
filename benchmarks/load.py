"""Concurrent load: N client processes x M coroutines calling `async_run` for a fixed time.

Each client is a separate spawn-context process that attaches to the server started by the
scenario process with `Runner(cls, name=...).init_client(spawn=False)`, runs its coroutines
on uvloop, and reports its latencies. All clients warm up, then start on one event, so their
measuring windows overlap and their rates add up.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback

import numpy as np

from .measure import summarize_ns

_ATTACH_TIMEOUT_S = 60.0


def client_main(idx: int, spec: dict, messages, start) -> None:
    """Client process entry point; every outcome is reported on `messages`."""
    try:
        import uvloop

        import runnerlib

        from . import runnables

        cls = getattr(runnables, spec["runnable"])
        runner = runnerlib.Runner(cls, name=spec["name"], **spec["runner_kwargs"])
        runner.init_client(spawn=False)
        try:
            result = uvloop.run(_drive(runner, idx, spec, messages, start))
        finally:
            runner.destroy()
        messages.put(("result", idx, result))
    except BaseException:  # noqa: BLE001 - reported to the scenario, which fails the row
        messages.put(("error", idx, traceback.format_exc()))


async def _drive(runner, idx: int, spec: dict, messages, start) -> dict:
    import asyncio

    x = np.ones((1, 16), dtype=np.float32)
    coros = spec["coroutines"]
    # runnerlib fails fast on a warm-up error; a peer may reject some (BentoML's 503s), which
    # its measuring window then counts as errors
    tolerate = bool(spec.get("warmup_errors_ok"))
    for _ in range(spec["warmup_rounds"]):
        await asyncio.gather(
            *(runner.async_run(x) for _ in range(coros)), return_exceptions=tolerate
        )
    messages.put(("ready", idx, None))
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, start.wait, _ATTACH_TIMEOUT_S):
        raise TimeoutError("start signal never came")

    # a caller whose call was refused waits this long before its next (the peers: a refusal
    # is immediate, and 64 callers retrying at once would measure nothing but refusals)
    backoff = float(spec.get("error_backoff_s", 0.0))
    clock = time.perf_counter_ns
    t_start = clock()
    deadline = t_start + int(spec["duration"] * 1e9)
    lat: list[int] = []
    errors = 0
    first_error: str | None = None

    async def caller():
        nonlocal errors, first_error
        while True:
            t0 = clock()
            if t0 >= deadline:
                return
            try:
                await runner.async_run(x)
            except Exception as e:  # noqa: BLE001 - counted, the load goes on
                errors += 1
                if first_error is None:
                    first_error = f"{type(e).__name__}: {e}"
                if backoff:
                    await asyncio.sleep(backoff)
                continue
            lat.append(clock() - t0)

    await asyncio.gather(*(caller() for _ in range(coros)))
    return {
        "lat_ns": np.asarray(lat, dtype=np.int64),
        "errors": errors,
        "first_error": first_error,
        "elapsed_s": (clock() - t_start) / 1e9,
    }


def run_load(spec: dict, processes: int, progress, target=client_main) -> dict:
    """Start `processes` clients with `spec`, time them, aggregate; always reaps the clients.

    `target(idx, spec, messages, start)` is the client's entry point (the peers bring their
    own, which drive their clients through `_drive` too)."""
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    start = ctx.Event()
    procs = [
        ctx.Process(target=target, args=(i, spec, messages, start), daemon=True)
        for i in range(processes)
    ]
    results: dict[int, dict] = {}
    try:
        for p in procs:
            p.start()
        _collect(messages, "ready", processes, _ATTACH_TIMEOUT_S, procs, results)
        progress(f"{processes} client(s) x {spec['coroutines']} callers, {spec['duration']:.1f} s")
        start.set()
        _collect(messages, "result", processes, spec["duration"] + 60.0, procs, results)
    finally:
        start.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
        messages.close()
        messages.join_thread()

    lat = np.concatenate([r["lat_ns"] for r in results.values()])
    out = summarize_ns(lat)
    errors = sum(r["errors"] for r in results.values())
    first = next((r["first_error"] for r in results.values() if r["first_error"]), None)
    out.update(
        client_processes=processes,
        callers=processes * spec["coroutines"],
        requests=int(lat.size),
        errors=errors,
        first_error=first,
        duration_s=spec["duration"],
        # windows overlap (one start event): the aggregate rate is the sum of the clients' rates
        req_s=sum(r["lat_ns"].size / r["elapsed_s"] for r in results.values()),
    )
    return out


def _collect(messages, kind: str, count: int, timeout: float, procs, results) -> None:
    """Wait for `count` messages of `kind`; a client error or death fails the scenario."""
    got = 0
    deadline = time.monotonic() + timeout
    while got < count:
        try:
            what, idx, payload = messages.get(timeout=0.5)
        except queue.Empty:
            what = None
        if what is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"clients: {got}/{count} '{kind}' within {timeout:.0f} s")
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"client process exited with code {dead[0].exitcode}")
            continue
        if what == "error":
            last = payload.strip().splitlines()[-1]
            raise RuntimeError(f"client {idx} failed: {last}\n{payload}")
        if what == kind:
            got += 1
            if kind == "result":
                results[idx] = payload
