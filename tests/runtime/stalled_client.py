"""A client with 320 async calls in flight whose answers (60 KiB each) overflow its channel
ring; it blocks its event loop once it printed "sent", and the test SIGSTOPs it meanwhile, so
that nothing is dispatched, then lets it go on. Prints "ok <n answered> <n WorkerDied>" at
the end (exit 0), or the failure."""

from __future__ import annotations

import asyncio
import sys
import time

import numpy as np
from runtime_runnables import Keeper

import runnerlib

CALLS = 320  # 19 MiB of answers: more than the old 16 MiB channel ring, 19 times the new one


async def main(name: str) -> None:
    runner = runnerlib.Runner(Keeper, name=name, cpu=1)
    runner.init_client(spawn=False)
    tasks = [asyncio.ensure_future(runner.block.async_run(15_000, float(i), _timeout=120))
             for i in range(CALLS)]
    for _ in range(5):  # the tasks start and the loop's flush sends their calls
        await asyncio.sleep(0)
    print("sent", flush=True)
    time.sleep(3.0)  # the loop is blocked (then stopped by the test): nothing is dispatched
    answered = died = 0
    for i, t in enumerate(tasks):
        try:
            value = await t
        except runnerlib.WorkerDied:
            died += 1
            continue
        if not (isinstance(value, np.ndarray) and value.shape == (15_000,)
                and bool((value == float(i)).all())):
            print(f"wrong answer to call {i}: {value!r:.80}", flush=True)
            sys.exit(1)
        answered += 1
    runner.destroy()
    print(f"ok {answered} {died}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
