"""Test-side helpers of the reliability tests: start client processes, gather their reports,
read memory figures of the server and its workers."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Callable

CTX = mp.get_context("spawn")


def _client(*a) -> None:
    from soak_clients import run_client

    run_client(*a)


def _big(*a) -> None:
    from soak_clients import run_big

    run_big(*a)


class Fleet:
    """Client processes calling one runner; their last reports by client id."""

    def __init__(self, name: str, *, concurrency: int = 32, mix: bool = True,
                 call_timeout: float = 60.0, tolerate: bool = False) -> None:
        self.name = name
        self.concurrency = concurrency
        self.mix = mix
        self.call_timeout = call_timeout
        self.tolerate = tolerate
        self.out = CTX.Queue()
        self.procs: dict[int, mp.process.BaseProcess] = {}
        self.reports: dict[int, dict] = {}
        self.done: set[int] = set()
        self.killed: set[int] = set()
        self._next = 0

    def start(self, calls: int = 0, seconds: float = 3600.0) -> int:
        cid = self._next
        self._next += 1
        p = CTX.Process(target=_client, args=(self.name, cid, calls, seconds, self.concurrency,
                                              self.mix, self.call_timeout, self.tolerate,
                                              self.out), daemon=True)
        p.start()
        self.procs[cid] = p
        return cid

    def start_big(self, count: int) -> int:
        cid = self._next
        self._next += 1
        p = CTX.Process(target=_big, args=(self.name, cid, count, self.call_timeout,
                                           self.tolerate, self.out), daemon=True)
        p.start()
        self.procs[cid] = p
        return cid

    def kill(self, cid: int) -> None:
        p = self.procs[cid]
        if p.pid is not None and p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        self.killed.add(cid)

    def running(self) -> list[int]:
        return [c for c, p in self.procs.items()
                if c not in self.done and c not in self.killed and p.is_alive()]

    def pump(self, wait: float = 0.0) -> None:
        deadline = time.monotonic() + wait
        while True:
            try:
                what, cid, snap = self.out.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                return
            if cid in self.done:
                continue
            self.reports[cid] = snap
            if what == "done":
                self.done.add(cid)

    def wait_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.pump(0.2)
            live = [c for c, p in self.procs.items() if c not in self.done and c not in self.killed]
            if not live:
                break
            dead = [c for c in live if not self.procs[c].is_alive()]
            if dead:
                self.pump(1.0)  # a last report may still be in the pipe
                missing = [c for c in dead if c not in self.done]
                if missing:
                    raise AssertionError(f"client(s) {missing} exited without a final report: "
                                         f"{[self.procs[c].exitcode for c in missing]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"client(s) {live} still running after {timeout} s "
                                     "(a call hung past its timeout?)")
        for p in self.procs.values():
            p.join(30)

    def close(self) -> None:
        for cid, p in self.procs.items():
            if p.is_alive():
                self.kill(cid)
        self.out.close()

    def total(self, key: str) -> int:
        return sum(r[key] for r in self.reports.values())

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.reports.values():
            for k, n in r["kinds"].items():
                out[k] = out.get(k, 0) + n
        return out

    def failures(self) -> list[str]:
        bad = []
        for r in self.reports.values():
            bad += r["mismatch"] + r["errors"]
            if r["overdue"]:
                bad.append(f"client {r['cid']}: {r['overdue']} call(s) overran their timeout "
                           f"by 5 s (max {r['max_elapsed']:.1f} s)")
        return bad


def status_kb(pid: int, field: str) -> int:
    """A `kB` field of /proc/PID/status (RssAnon, RssShmem, VmRSS...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def worker_pids(served_server) -> list[int]:
    return [w.proc.pid for s in served_server.served for w in s.workers if w.proc is not None]


def wait_for(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)
