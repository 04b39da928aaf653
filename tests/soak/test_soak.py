"""Soak: a million calls from several client processes, every answer checked by content, with
resident memory of the server and its workers bounded after warm-up (SPEC 6, 7, 8)."""

from __future__ import annotations

import os
import time

import pytest
from soak_harness import Fleet, status_kb, worker_pids
from soak_runnables import soak_runner

import runnerlib

#: Calls in the soak run; RUNNERLIB_SOAK_CALLS overrides (docs/reliability.md has the rate).
SOAK_CALLS = int(os.environ.get("RUNNERLIB_SOAK_CALLS", "1000000"))
CLIENTS = 4
CONCURRENCY = 64  # async callers per client process
BIG_CALLS = 4  # 64 MiB round trips, alongside
#: Growth of private (anonymous) resident memory allowed after warm-up, per process. Shared
#: ring pages are not counted here: they are bounded by the ring sizes, not by the call count.
MEMORY_BOUND_KB = 64 << 10
WARMUP_FRACTION = 0.1
#: The run stops early (each client finishes the calls it has in flight) after this long, so
#: that a machine busy with other work still ends the group in time; at least MIN_CALLS must
#: have been checked by then.
SOAK_SECONDS = float(os.environ.get("RUNNERLIB_SOAK_SECONDS", "200"))
MIN_CALLS = min(SOAK_CALLS, 200_000)


def _sample(pids: list[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        try:
            out[pid] = status_kb(pid, "RssAnon")
        except OSError:
            pass
    return out


@pytest.mark.soak
@pytest.mark.timeout(330)
def test_soak_a_million_checked_calls():
    runner = soak_runner("soak")
    with runnerlib.Server([runner]) as server:
        fleet = Fleet("soak", concurrency=CONCURRENCY, mix=True, call_timeout=120)
        try:
            t0 = time.monotonic()
            for _ in range(CLIENTS):
                fleet.start(calls=SOAK_CALLS // CLIENTS, seconds=SOAK_SECONDS)
            fleet.start_big(BIG_CALLS)
            warm_at = SOAK_CALLS * WARMUP_FRACTION
            while fleet.total("ok") < warm_at and fleet.running():
                fleet.pump(0.5)
                assert time.monotonic() - t0 < 120, f"warm-up too slow: {fleet.reports}"
                assert not fleet.failures(), fleet.failures()
            pids = [os.getpid()] + worker_pids(server)
            base = _sample(pids)
            peak = dict(base)
            deadline = time.monotonic() + 300
            while fleet.running():
                fleet.pump(1.0)
                for pid, kb in _sample(pids).items():
                    peak[pid] = max(peak.get(pid, 0), kb)
                assert time.monotonic() < deadline, "soak did not finish in 300 s"
            fleet.wait_all(60)
            elapsed = time.monotonic() - t0
            end = _sample(pids)
        finally:
            fleet.close()
        # the server still serves after the load
        runner.init_client(spawn=False)
        assert runner.echo.run("after") == "after"
        runner.destroy()
        restarts = [int(s.ctl.workers[w.index, 2]) for s in server.served for w in s.workers]
    ok = fleet.total("ok")
    growth = {pid: peak[pid] - base[pid] for pid in base}
    print(f"\nsoak: {ok} calls checked in {elapsed:.1f} s ({ok / elapsed:,.0f}/s), "
          f"kinds {fleet.kinds()}; RssAnon after warm-up (kB): base {base}, peak {peak}, "
          f"end {end}, growth {growth}")
    assert fleet.failures() == []
    # clients stop on time, not on a count, only when the machine is slower than planned
    assert ok >= MIN_CALLS, f"only {ok} calls in {SOAK_SECONDS} s"
    assert ok <= SOAK_CALLS // CLIENTS * CLIENTS + BIG_CALLS
    assert fleet.kinds().get("big") == BIG_CALLS
    assert restarts == [0] * len(restarts), "a worker died during the soak"
    assert max(growth.values()) <= MEMORY_BOUND_KB, growth
