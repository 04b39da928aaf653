"""Client-process bodies for the cross-process tests (run under multiprocessing spawn)."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np


def call_many(name: str, n: int, seed: int, out) -> None:
    """Attach to a running server and check every answer by content."""
    from runnables import echo_runner

    runner = echo_runner(name)
    runner.init_client(spawn=False)
    try:
        rng = np.random.default_rng(seed)
        for i in range(n):
            x = rng.standard_normal((1, 16)).astype(np.float32)
            y = runner.echo.run(x)
            if not np.array_equal(x, y):
                out.put(("mismatch", seed, i))
                return
        out.put(("ok", seed, n))
    finally:
        runner.destroy()


def call_async_many(name: str, n: int, concurrency: int, seed: int, out) -> None:
    import uvloop
    from runnables import echo_runner

    runner = echo_runner(name)
    runner.init_client(spawn=False)

    async def one(k: int) -> int:
        bad = 0
        for i in range(n):
            x = np.full((2, 3), seed * 1_000_000 + k * 1000 + i, dtype=np.int64)
            y = await runner.echo.async_run(x)
            bad += not np.array_equal(x, y)
        return bad

    async def main() -> int:
        return sum(await asyncio.gather(*(one(k) for k in range(concurrency))))

    try:
        bad = uvloop.run(main())
        out.put(("ok" if bad == 0 else "mismatch", seed, bad))
    finally:
        runner.destroy()


def spawn_and_report(name: str, start_evt, out) -> None:
    """Race to spawn an embedded server; report which server pid we ended up with."""
    from runnables import echo_runner

    runner = echo_runner(name)
    start_evt.wait()
    runner.init_client()
    out.put(("server", runner._handle.info.server_pid, runner.pid.run()))
    time.sleep(1.5)  # keep a spawned server alive while the other attaches and calls
    runner.destroy()


def hang_in_call(name: str, ready) -> None:
    """Start a long call and get killed in the middle of it."""
    from runnables import echo_runner

    runner = echo_runner(name)
    runner.init_client(spawn=False)
    ready.set()
    runner.sleep.run(30)


def main_guarded_script() -> str:
    return os.path.join(os.path.dirname(__file__), "script_runnable.py")
