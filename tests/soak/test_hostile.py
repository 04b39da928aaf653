"""Hostile shared memory: a process of the same user writes random bytes into the request
ring and the client channel rings while calls run (SPEC 8, 9: nothing read from shared memory
is trusted). No client or worker may crash; affected calls fail with an error (or, as the wire
format carries no checksum, may carry scribbled payload bytes); the server keeps serving."""

from __future__ import annotations

import time

import pytest
from soak_harness import CTX, Fleet
from soak_runnables import soak_runner

import runnerlib
from runnerlib._shm.control import W_RESTARTS

#: exception types a call may fail with while its bytes are scribbled over
CLEAR = {"ProtocolError", "RunnerTimeout", "WorkerDied", "RemoteError", "RunnerError",
         "CorruptRecord", "ValueError", "TypeError", "KeyError", "IndexError"}


def _scribble(*a) -> None:
    from soak_clients import scribble

    scribble(*a)


def _hostile(name: str, seconds: float, header: bool, seed: int) -> dict:
    runner = soak_runner(name, timeout=10)
    with runnerlib.Server([runner]) as server:
        served = server.served[0]
        fleet = Fleet(name, concurrency=8, mix=True, call_timeout=5, tolerate="hostile")
        try:
            for _ in range(2):
                fleet.start(seconds=seconds + 2)
            time.sleep(1.5)  # let the clients open their channels
            ctl = served.ctl
            names = [served.requests.name] + [ctl.channel_ring_name(s)
                                              for s, _o, _g in ctl.open_channels()]
            names = [n for n in names if n]
            out = CTX.Queue()
            p = CTX.Process(target=_scribble, args=(names, seconds, seed, header, out))
            p.start()
            _, written, writes = out.get(timeout=seconds + 60)
            p.join(30)
            fleet.wait_all(seconds + 60)
        finally:
            fleet.close()
        restarts = sum(int(ctl.workers[w.index, W_RESTARTS]) for w in served.workers)
        # the server keeps serving once the scribbling stops
        runner.init_client(spawn=False)
        deadline = time.monotonic() + 30
        good = 0
        while good < 20:
            try:
                good += runner.echo.run(good, _timeout=5) == good
            except runnerlib.RunnerError:
                assert time.monotonic() < deadline, "the server did not recover"
        runner.destroy()
    reports = list(fleet.reports.values())
    errors = {}
    for r in reports:
        for k, n in r["kinds"].items():
            if k.startswith("error:"):
                errors[k[6:]] = errors.get(k[6:], 0) + n
    figures = {"bytes": written, "writes": writes, "ok": fleet.total("ok"),
               "scribbled_answers": sum(r["n_mismatch"] for r in reports),
               "died": fleet.total("died"), "timeout": fleet.total("timeout"),
               "errors": errors, "restarts": restarts}
    print(f"\nhostile {name}: {figures}")
    crashed = [e for r in reports for e in r["errors"] if e.startswith("client crashed")]
    assert crashed == []
    assert set(errors) <= CLEAR, errors
    return figures


def test_hostile_bytes_in_rings_never_crash_a_client():
    _hostile("hostile", seconds=4, header=False, seed=3)


def test_hostile_bytes_never_kill_a_worker():
    figures = _hostile("hostile-w", seconds=4, header=False, seed=4)
    assert figures["restarts"] == 0


def test_hostile_cursor_bytes_do_not_wedge_the_ring():
    _hostile("hostile-h", seconds=3, header=True, seed=5)


@pytest.mark.soak
@pytest.mark.timeout(180)
def test_hostile_soak():
    _hostile("hostile-long", seconds=30, header=False, seed=6)
