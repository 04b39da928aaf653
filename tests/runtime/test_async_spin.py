"""An event loop's caller spins for its answer only when it is alone (issue 16).

A coroutine that spins holds up every other coroutine of its loop, and under load it burns
the CPU that the other client processes need: in the batched benchmark (64 callers over 4
processes on 2 CPUs) the spin of the first caller to resume after each wake-up took most of
the clients' CPU, and p99 sat at 4.4-5.8 ms; without it, 1.4 ms. A lone caller still spins,
so that a back-to-back answer needs no wake-up. Real server, real rings: the spins are
counted where the client calls ``Ring.spin_pending`` on its loop channel's ring."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from runtime_runnables import Marker, RowCounter

import runnerlib

CALLERS = 16
ROUNDS = 40


def _count_spins(ring) -> list[float]:
    spins: list[float] = []
    real = ring.spin_pending

    def counting(seconds: float) -> bool:
        spins.append(seconds)
        return real(seconds)

    ring.spin_pending = counting
    return spins


@pytest.mark.parametrize("batched", [False, True], ids=["plain", "batched"])
def test_callers_with_company_never_spin_and_a_lone_caller_does(batched):
    runnable = RowCounter if batched else Marker
    kwargs = {"max_batch_size": 64, "max_latency_ms": 5} if batched else {}
    runner = runnerlib.Runner(runnable, name=f"spin-{int(batched)}", **kwargs)
    method = runner.count if batched else runner.echo
    x = np.ones((1, 4), np.float32)

    async def main() -> tuple[int, int, int]:
        await method.async_run(x)  # this loop's channel now exists
        ring = runner._handle._loop_channel().ring
        spins = _count_spins(ring)
        try:
            async def caller() -> int:
                for _ in range(ROUNDS):
                    await method.async_run(x)
                return ROUNDS

            done = sum(await asyncio.gather(*(caller() for _ in range(CALLERS))))
            with_company = len(spins)
            for _ in range(20):
                await method.async_run(x)  # one at a time: alone, each call spins
            return done, with_company, len(spins) - with_company
        finally:
            del ring.spin_pending

    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        try:
            done, with_company, alone = asyncio.run(main())
        finally:
            runner.destroy()
    assert done == CALLERS * ROUNDS
    # only as the callers finish, one by one, can the last ones find themselves alone
    assert with_company <= CALLERS, f"{with_company} spins in {done} calls with company"
    assert alone >= 20
