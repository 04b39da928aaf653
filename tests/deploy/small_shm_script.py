"""Run inside a private mount namespace whose /dev/shm is a 64 MiB tmpfs (Docker's default):
an embedded server starts within the default budget and serves small calls and a 4 MiB call;
a 100 MiB argument fails with a RunnerError that names the limit and the fix, and the next
call succeeds; ``python -m runnerlib status`` shows the budget and the use; a budget set larger
than /dev/shm fails at start with an error naming /dev/shm's size and the fix. Prints
"CHECK <name>" for each check passed and "ALL OK" at the end; exits non-zero otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from deploy_runnables import Echo  # noqa: E402

import runnerlib  # noqa: E402
from ipc import liveness  # noqa: E402


def check(name: str, ok: bool, detail: object = "") -> None:
    if not ok:
        print(f"FAILED {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"CHECK {name}", flush=True)


def status_json() -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "runnerlib", "status", "--json"],
                         capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


def main() -> None:
    st = os.statvfs("/dev/shm")
    check("a 64 MiB /dev/shm", st.f_blocks * st.f_frsize == 64 << 20, st)
    os.environ.pop("RUNNERLIB_SHM_BUDGET", None)
    os.environ["RUNNERLIB_NAMESPACE"] = f"small-shm-{os.getpid()}"
    runner = runnerlib.Runner(Echo, name="small-shm", cpu=1)
    runner.init_client()  # an embedded server, in the default budget
    check("small calls", all(runner.echo.run(("small", i)) == ("small", i) for i in range(20)))
    x = np.arange((4 << 20) // 8, dtype=np.int64)
    check("a 4 MiB call", np.array_equal(runner.echo.run(x, _timeout=60), x))
    try:
        runner.nbytes.run(np.zeros(100 << 20, dtype=np.uint8), _timeout=60)
        check("100 MiB refused", False, "the call succeeded")
    except runnerlib.RunnerError as exc:
        msg = str(exc)
        check("100 MiB refused with a TransportError",
              isinstance(exc, runnerlib.TransportError), repr(exc))
        check("the error names the limit", "up to" in msg and "MiB" in msg
              and "budget" in msg, msg)
        check("the error names the fix", "--shm-size" in msg and "sizeLimit" in msg
              and "shm_budget" in msg, msg)
    check("the next call succeeds", runner.echo.run(("after", 1)) == ("after", 1))
    try:  # a result too large: the worker answers with the same error, and keeps serving
        runner.make.run(100 << 20, _timeout=60)
        check("a 100 MiB result refused", False, "the call succeeded")
    except runnerlib.RunnerError as exc:
        check("a 100 MiB result refused with a TransportError naming limit and fix",
              isinstance(exc, runnerlib.TransportError) and "up to" in str(exc)
              and "--shm-size" in str(exc), repr(exc))
    check("and the call after it succeeds", runner.echo.run(("after", 2)) == ("after", 2))
    check("a 4 MiB call after it", runner.nbytes.run(np.zeros(4 << 20, np.uint8)) == 4 << 20)
    snap = [s for s in status_json() if s["runner"] == "small-shm"]
    check("status lists the server", len(snap) == 1, snap)
    shm = snap[0]["shm"]
    check("status shows the budget", 0 < shm["budget"] <= 32 << 20, shm)
    check("status shows the use", 0 < shm["used"] <= 64 << 20, shm)
    # every size up to the limit, both ways, over and over: the budget holds them all (a
    # receiver's stale mappings or a pool's idle segments never fill /dev/shm)
    limit = shm["message_limit"]
    for rep in range(3):
        for k in (1, 2, 3, 4, 2, 4):
            n = limit * k // 4 - (64 << 10)
            y = runner.echo.run(np.full(n, k, dtype=np.uint8), _timeout=60)
            check(f"a {n >> 10} KiB round trip (round {rep})", y.nbytes == n and y[-1] == k)
            del y
    text = subprocess.run([sys.executable, "-m", "runnerlib", "status"], capture_output=True,
                          text=True, timeout=60).stdout
    check("status text shows budget and use", "budget" in text and "used" in text, text)
    print(text, flush=True)
    runner.destroy()

    # a budget larger than /dev/shm can hold: the server cannot start, and says why
    os.environ["RUNNERLIB_SHM_BUDGET"] = "1Gi"
    big = runnerlib.Runner(Echo, name="too-big", cpu=1)
    try:
        big.init_client()
        check("an oversized budget fails at start", False, "the server started")
    except runnerlib.RunnerError as exc:
        msg = str(exc)
        check("an oversized budget fails with the figures and the fix",
              "/dev/shm has" in msg and "--shm-size" in msg, msg)
    def left() -> list[str]:  # this live process's own liveness lock stays until it exits
        return [n for n in os.listdir("/dev/shm") if not liveness.is_mine(n)]

    deadline = time.monotonic() + 30
    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    check("nothing left in /dev/shm", left() == [], left())
    print("ALL OK", flush=True)


if __name__ == "__main__":
    main()
