"""Instructions per call, counted by callgrind: a figure that hardly drifts with the machine.

On shared VMs the wall-clock figures of the suite move by 2x within an hour, so an A/B of a
10 % change cannot be seen in them. This counts what a change does to the work itself: one
process of a real two-process set-up (an embedded Server, one worker) runs under callgrind,
its counts are dumped before and after N steady-state calls (``callgrind_control -d``), and
the second dump of the measured thread, which holds exactly those calls, is summed without
the spin (the peer's spin window is set long, so neither side takes the sleep path; hash seed
fixed). Repeats agree within 0.3 % batched, 1.5 % for the worker, 3 % for the client.

    python -m benchmarks.instructions                 # worker and client, float32[1,16] run()
    python -m benchmarks.instructions --side batched  # worker, per request, 64 async callers

Needs valgrind (callgrind, callgrind_control, callgrind_annotate). Run it from the checkout
being measured: a worker imports runnerlib from the directory it was started in.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

SPIN = re.compile(r"fast_spin_pending|pending_core|now_ns|clock_gettime|sched_yield|vdso|poll")
WARMUP = 300
TOOLS = ("valgrind", "callgrind_control", "callgrind_annotate")


def _dump(pid: int) -> None:
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, stdout=subprocess.DEVNULL)


def _work(dump_file: str) -> int:
    """Instructions in a dump, less the spin's."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no", dump_file],
                         check=True, capture_output=True, text=True).stdout
    total = spin = 0
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\(.*?\))?\s*(\S+)", line)
        if not m:
            continue
        n = int(m.group(1).replace(",", ""))
        if m.group(2) == "PROGRAM":
            total = n
        elif SPIN.search(m.group(2)):
            spin += n
    return total - spin


def _worker_pid() -> int:
    from .measure import descendants

    for pid in descendants():
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"runnerlib._shm.worker" in f.read():
                return pid
    raise RuntimeError("no worker process found")


def _drive(side: str, calls: int, dump_pid: int | None) -> int:
    """Run the calls against a fresh server; dump ``dump_pid`` (the worker when None) around
    the measured ones. The number of calls measured."""
    import runnerlib
    import runnerlib._shm.client as client

    from . import runnables

    client.SPIN_SYNC = 1.0  # the client never sleeps: the worker never writes a wake-up
    batched = side == "batched"
    runner = runnerlib.Runner(runnables.Echo if batched else runnables.Identity,
                              name=f"instructions-{side}", cpu=1, timeout=600,
                              **({"max_batch_size": 64, "max_latency_ms": 10} if batched else {}))
    x = np.ones((1, 16), np.float32)
    with runnerlib.Server([runner]):
        runner.init_client()
        try:
            if batched:
                rounds = max(calls // 64, 1)

                async def load(n: int) -> None:
                    async def one() -> None:
                        for _ in range(n):
                            await runner.async_run(x)
                    await asyncio.gather(*(one() for _ in range(64)))

                asyncio.run(load(WARMUP // 64 + 1))
                pid = dump_pid or _worker_pid()
                _dump(pid)
                asyncio.run(load(rounds))
                _dump(pid)
                return rounds * 64
            for _ in range(WARMUP):
                runner.run(x)
            pid = dump_pid or _worker_pid()
            _dump(pid)
            for _ in range(calls):
                runner.run(x)
            _dump(pid)
            return calls
        finally:
            runner.destroy()


def measure(side: str, calls: int) -> float:
    """Instructions per call (per request, batched) of the worker, or of the client."""
    out = tempfile.mkdtemp(prefix="rl-instructions-")
    env = dict(os.environ, PYTHONHASHSEED="0", RUNNERLIB_WORKER_SPIN_US="1000000")
    try:
        cmd = [sys.executable, "-m", "benchmarks.instructions", "--inside", side,
               "--calls", str(calls), "--out", out]
        if side == "client":
            cmd = ["valgrind", "--tool=callgrind", "-q", "--separate-threads=yes",
                   f"--callgrind-out-file={out}/client.%p", *cmd]
        done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        n = int(done.stdout.split()[-1])
        # the calling thread's (or the worker's main thread's) second dump: the server's
        # supervisor thread in the client process works by the clock, not by the call
        dumps = [f for f in os.listdir(out) if f.endswith(".2-01")]
        if len(dumps) != 1:
            raise RuntimeError(f"expected one main-thread second dump in {out}, found {dumps}")
        return _work(os.path.join(out, dumps[0])) / n
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _inside(side: str, calls: int, out: str) -> None:
    """The measuring process itself (the client, under valgrind when it is measured)."""
    if side != "client":  # the worker under valgrind: a wrapper as this interpreter
        wrapper = os.path.join(out, "python")
        with open(wrapper, "w") as f:
            f.write(f'#!/bin/sh\nif [ "$2" = runnerlib._shm.worker ]; then exec valgrind '
                    f'--tool=callgrind -q --separate-threads=yes '
                    f'--callgrind-out-file={out}/worker.%p '
                    f'{sys.executable} "$@"; fi\nexec {sys.executable} "$@"\n')
        os.chmod(wrapper, 0o755)
        sys.executable = wrapper
    n = _drive(side, calls, os.getpid() if side == "client" else None)
    print(n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=("worker", "client", "batched", "both"), default="both")
    p.add_argument("--calls", type=int, default=1000, help="calls measured (default 1000)")
    p.add_argument("--inside", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.inside:
        _inside(opts.inside, opts.calls, opts.out)
        return 0
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        print(f"needs valgrind's {', '.join(missing)} on PATH (Debian: apt install valgrind)",
              file=sys.stderr)
        return 2
    sides = ("worker", "client") if opts.side == "both" else (opts.side,)
    for side in sides:
        what = "per request, batched (64 callers, 64 rows)" if side == "batched" else "per call"
        who = "client" if side == "client" else "worker"
        print(f"{who} instructions {what}: {measure(side, opts.calls):,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
