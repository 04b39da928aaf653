"""Chaos: SIGKILL workers and client processes at random moments while clients call (SPEC 8).

Every call must return its own correct result (checked by content) or raise WorkerDied /
RunnerTimeout; no call may overrun its timeout; the server must restart every killed worker
and reclaim every killed client's channel; calls only queued when a worker dies are not lost
(the number of WorkerDied answers per kill is bounded by what one worker can hold)."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from soak_harness import CTX, Fleet, wait_for, worker_pids
from soak_runnables import soak_runner

import runnerlib
from runnerlib import stats
from runnerlib._shm.control import W_RESTARTS

MAX_BATCH = 64  # soak_runner's max_batch_size


def _victim(*a) -> None:
    from soak_clients import call_until_killed

    call_until_killed(*a)


def _chaos(name: str, seconds: float, worker_kills: int, client_kills: int, seed: int,
           big: int = 0) -> dict:
    rng = random.Random(seed)
    runner = soak_runner(name)
    with runnerlib.Server([runner]) as server:
        served = server.served[0]
        fleet = Fleet(name, concurrency=16, mix=True, call_timeout=20, tolerate=True)
        victims = []
        try:
            for _ in range(2):
                fleet.start(seconds=seconds)
            if big:
                fleet.start_big(big)
            # the kill schedule: random moments over the first 80% of the run
            moments = sorted([("worker", rng.uniform(0.5, seconds * 0.8))
                              for _ in range(worker_kills)]
                             + [("client", rng.uniform(0.5, seconds * 0.8))
                                for _ in range(client_kills)], key=lambda m: m[1])
            t0 = time.monotonic()
            killed_workers = 0
            killed_clients = 0
            for what, at in moments:
                while time.monotonic() - t0 < at:
                    fleet.pump(0.05)
                if what == "worker":
                    # only a worker that is up (the previous one may still be restarting)
                    wait_for(lambda: all(w.proc is not None and w.ready for w in served.workers),
                             60, "the restarted worker")
                    pid = rng.choice(worker_pids(server))
                    os.kill(pid, signal.SIGKILL)
                    killed_workers += 1
                    # until the supervisor has seen this death, the dead worker looks ready
                    wait_for(lambda pid=pid: pid not in worker_pids(server), 30,
                             "the supervisor to notice the killed worker")
                else:
                    ready = CTX.Event()
                    p = CTX.Process(target=_victim, args=(name, ready, 8), daemon=True)
                    p.start()
                    assert ready.wait(60), "victim client did not start calling"
                    time.sleep(rng.uniform(0.0, 0.3))
                    os.kill(p.pid, signal.SIGKILL)
                    p.join(10)
                    victims.append(p)
                    killed_clients += 1
            fleet.wait_all(seconds + 120)
        finally:
            fleet.close()
            for p in victims:
                p.join(1)
        # the server recovered: workers back, every dead client's channel reclaimed
        wait_for(lambda: all(w.proc is not None and w.ready for w in served.workers), 60,
                 "the last restarted worker")
        runner.init_client(spawn=False)
        info = runner._handle.info
        deadline = time.monotonic() + 30
        while True:
            try:
                assert runner.echo.run("after", _timeout=10) == "after"
                break
            except runnerlib.WorkerDied:
                assert time.monotonic() < deadline
        wait_for(lambda: stats.snapshot(info)["clients"] <= 1, 30,
                 "the channels of killed clients to be reclaimed")
        restarts = sum(int(served.ctl.workers[w.index, W_RESTARTS]) for w in served.workers)
        runner.destroy()
    figures = {"ok": fleet.total("ok"), "died": fleet.total("died"),
               "timeout": fleet.total("timeout"), "worker_kills": killed_workers,
               "client_kills": killed_clients, "restarts": restarts, "kinds": fleet.kinds()}
    print(f"\nchaos {name}: {figures}")
    assert fleet.failures() == []
    assert restarts == killed_workers
    assert figures["ok"] > 0
    # only calls a worker had taken may die with it; queued calls wait for the restart
    assert figures["died"] <= killed_workers * (2 * MAX_BATCH + 8), figures
    return figures


def test_short_chaos():
    _chaos("chaos-short", seconds=8, worker_kills=3, client_kills=2, seed=1)


@pytest.mark.soak
@pytest.mark.timeout(240)
def test_chaos_soak():
    _chaos("chaos-long", seconds=60, worker_kills=25, client_kills=12, seed=2, big=3)
