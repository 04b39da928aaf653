"""Roles of ring_race_scenario.py: a server, a caller of large calls, a caller of small ones.
Each prints one JSON line."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

import runnerlib

ROWS = 3_000_000  # 24 MB of int64: travels inline in the 64 MiB request ring, a long copy


class Summer(runnerlib.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    @runnerlib.Runnable.method
    def total(self, x):
        return x if isinstance(x, int) else int(np.asarray(x, dtype=np.int64).sum())


def _runner() -> runnerlib.Runner:
    return runnerlib.Runner(Summer, name="race", cpu=1)


def _say(**kw: object) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def server() -> None:
    s = runnerlib.Server([_runner()])
    s.start()
    _say(ready=True, pid=os.getpid())
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    s.stop()
    _say(stopped=True)


def big(calls: str) -> None:
    r = _runner()
    r.init_client(spawn=False)
    x = np.ones(ROWS, dtype=np.int64)
    ok, errs = 0, []
    for _ in range(int(calls)):
        try:
            got = r.total.run(x, _timeout=15)
            ok += got == ROWS
            if got != ROWS:
                errs.append(f"wrong answer {got}")
        except runnerlib.RunnerError as exc:
            errs.append(f"{type(exc).__name__}: {exc}"[:200])
    r.destroy()
    _say(ok=ok, errors=errs)


def small(seconds: str) -> None:
    r = _runner()
    r.init_client(spawn=False)
    end = time.monotonic() + float(seconds)
    n, errs = 0, []
    while time.monotonic() < end:
        try:
            if r.total.run(1, _timeout=15) != 1:
                errs.append("wrong answer")
        except runnerlib.RunnerError as exc:
            errs.append(f"{type(exc).__name__}: {exc}"[:200])
        n += 1
    r.destroy()
    _say(calls=n, errors=errs[:5])


if __name__ == "__main__":
    import ring_race_roles

    getattr(ring_race_roles, sys.argv[1])(*sys.argv[2:])
