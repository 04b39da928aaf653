"""A process that calls init_client() (embedded server), then forks while calling (from its
main thread and, with ``threads``, from other threads too). The child makes calls of its own
and exits in the way ``mode`` names: ``sys_exit`` (a normal exit: atexit hooks and finalizers
run), ``os_exit`` (none run), ``mp_fork`` (a multiprocessing Process, fork context). Prints one
JSON line describing what every side saw; the test judges it.

Every call carries a value no other call carries, so an answer delivered to the wrong call
is seen as a mismatch."""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from deploy_runnables import Echo  # noqa: E402

import runnerlib  # noqa: E402
from ipc.codec.cache import BoundedCache  # noqa: E402
from runnerlib import registry  # noqa: E402
from runnerlib._shm.control import C_OWNER, C_STATE, H_NWORKERS, W_PID  # noqa: E402

CALL_TIMEOUT = 10.0


def child_body(runner: runnerlib.Runner, out_fd: int) -> int:
    """The child's calls; reports its channel slot and any wrong or failed answer."""
    me = os.getpid()
    report: dict[str, object] = {"pid": me, "bad": [], "calls": 0}
    try:
        # a value of a shape nobody sent before: the codec learns (and caches) a new plan
        fresh = np.arange(7, dtype=np.int16) * me
        if not np.array_equal(runner.echo.run(fresh, _timeout=CALL_TIMEOUT), fresh):
            report["bad"].append(["fresh array", "wrong answer"])  # type: ignore[union-attr]
        # an event loop of the child's own: a loop channel of its own (the parent's loop
        # channel, of a loop the parent ran before the fork, is forgotten)
        async def gathered() -> list[object]:
            return list(await asyncio.gather(*(
                runner.echo.async_run(("child-async", me, k), _timeout=CALL_TIMEOUT)
                for k in range(16))))

        answers = asyncio.run(gathered())
        if [tuple(a) for a in answers] != [("child-async", me, k) for k in range(16)]:
            report["bad"].append(["async", repr(answers)[:300]])  # type: ignore[union-attr]
        # larger than a ring record: a handoff segment of the child's own pool
        big = np.full(9 << 20, me % 251, dtype=np.uint8)
        if not np.array_equal(runner.echo.run(big, _timeout=60), big):
            report["bad"].append(["big array", "wrong answer"])  # type: ignore[union-attr]
        t_end = time.monotonic() + 1.0
        i = 0
        while i < 40 or time.monotonic() < t_end:
            value = ("child", me, i)
            got = runner.echo.run(value, _timeout=CALL_TIMEOUT)
            if tuple(got) != value:
                report["bad"].append([list(value), repr(got)])  # type: ignore[union-attr]
            i += 1
        report["calls"] = i
        handle = runner._handle
        report["slot"] = handle._local.channel.slot  # type: ignore[attr-defined]
    except BaseException:  # noqa: BLE001 - everything goes into the report
        report["error"] = traceback.format_exc()
    os.write(out_fd, (json.dumps(report) + "\n").encode())
    return 0 if not report["bad"] and "error" not in report else 1


def _mp_target(runner: runnerlib.Runner, out_fd: int) -> None:
    sys.exit(child_body(runner, out_fd))


class Caller(threading.Thread):
    """Calls until told to stop, checking every answer."""

    def __init__(self, runner: runnerlib.Runner, name: str) -> None:
        super().__init__(daemon=True)
        self.runner = runner
        self.label = name
        self.stop = threading.Event()
        self.calls = 0
        self.bad: list[object] = []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            value = (self.label, i)
            try:
                got = self.runner.echo.run(value, _timeout=CALL_TIMEOUT)
                if tuple(got) != value:
                    self.bad.append([list(value), repr(got)])
            except Exception as exc:  # noqa: BLE001
                self.bad.append([list(value), f"{type(exc).__name__}: {exc}"[:300]])
            i += 1
            self.calls = i


def _locks_to_hold(handle: object) -> list[threading.Lock]:
    """Every lock of the runtime a thread of the parent may hold at the moment of a fork: the
    handle's, its handoff pool's and reader's, and every codec cache's."""
    caches = [o for o in gc.get_objects() if isinstance(o, BoundedCache)]
    return [handle._lock, handle.handoffs._lock,  # type: ignore[attr-defined]
            handle.handoff_reader._lock,  # type: ignore[attr-defined]
            *(c._lock for c in caches)]


def main() -> None:
    mode, threads = sys.argv[1], sys.argv[2] == "threads"
    locked = len(sys.argv) > 3 and sys.argv[3] == "locked"
    os.environ["RUNNERLIB_NAMESPACE"] = f"fork-{os.getpid()}"
    runner = runnerlib.Runner(Echo, name=f"fork-{mode}", cpu=1)
    runner.init_client()  # no server runs: this process starts an embedded one
    handle = runner._handle
    assert runner.echo.run(("parent", -1)) == ("parent", -1)
    # the parent has run an event loop too: it has a loop channel the child inherits
    assert asyncio.run(runner.echo.async_run(("parent-async", -1))) == ("parent-async", -1)
    ctl = handle.ctl  # type: ignore[attr-defined]
    workers = [int(ctl.workers[i, W_PID]) for i in range(int(ctl.header[H_NWORKERS]))]
    parent_slot = handle._local.channel.slot  # type: ignore[attr-defined]
    callers = [Caller(runner, f"thread-{k}") for k in range(2 if threads else 0)]
    for c in callers:
        c.start()
    while callers and not all(c.calls > 3 for c in callers):
        time.sleep(0.01)
    r, w = os.pipe()
    # "locked": the fork happens while other threads hold the runtime's locks (they do not
    # exist in the child to give them back); the parent gives them back after the fork
    held = _locks_to_hold(handle) if locked else []
    for lock in held:
        lock.acquire()
    if mode == "mp_fork":
        proc = multiprocessing.get_context("fork").Process(target=_mp_target, args=(runner, w))
        proc.start()
        child = proc.pid
    else:
        child = os.fork()
        if child == 0:
            code = child_body(runner, w)
            if mode == "sys_exit":
                sys.exit(code)  # a normal exit: atexit hooks and weakref finalizers run
            os._exit(code)
    for lock in held:
        lock.release()
    os.close(w)
    # the parent's main thread calls while the child calls, and after it is gone
    main_caller_bad: list[object] = []
    main_calls = 0

    def call_once() -> None:
        nonlocal main_calls
        value = ("main", main_calls)
        try:
            got = runner.echo.run(value, _timeout=CALL_TIMEOUT)
            if tuple(got) != value:
                main_caller_bad.append([list(value), repr(got)])
        except Exception as exc:  # noqa: BLE001
            main_caller_bad.append([list(value), f"{type(exc).__name__}: {exc}"[:300]])
        main_calls += 1

    exited = None
    give_up = time.monotonic() + 120
    while exited is None:
        call_once()
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            exited = os.waitstatus_to_exitcode(status)
        elif time.monotonic() > give_up:  # a child that hangs (a lock it inherited held)
            os.kill(child, signal.SIGKILL)
    if mode == "mp_fork":
        proc.join()
    with os.fdopen(r) as f:
        lines = f.read().splitlines()
    child_report = json.loads(lines[-1]) if lines else {"error": "the child reported nothing"}
    # the child is gone: the parent keeps calling while its channels are reclaimed
    def child_slots() -> list[int]:
        return [s for s in range(len(ctl.channels)) if int(ctl.channels[s, C_OWNER]) == child]

    t_min, t_max = time.monotonic() + 2.5, time.monotonic() + 30.0
    while time.monotonic() < t_min or (child_slots() and time.monotonic() < t_max):
        call_once()
    for c in callers:
        c.stop.set()
    for c in callers:
        c.join(30)
    row = ctl.channels[parent_slot]
    report = {
        "parent": os.getpid(),
        "child": child,
        "child_exit": exited,
        "child_report": child_report,
        "workers": workers,
        "workers_alive": [registry.pid_alive(p) for p in workers],
        "parent_slot": parent_slot,
        "parent_slot_owner": int(row[C_OWNER]),
        "parent_slot_state": int(row[C_STATE]),
        "child_slots_left": child_slots(),
        "server_state": ctl.state,
        "main_calls": main_calls,
        "main_bad": main_caller_bad,
        "threads": [{"calls": c.calls, "bad": c.bad} for c in callers],
    }
    runner.destroy()  # stops the embedded server
    print("REPORT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
