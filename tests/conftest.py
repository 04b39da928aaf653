"""Suite-wide isolation: a private runtime dir and namespace, and a check after every test
that no shared-memory segment and no worker process was left behind.

Other sessions may run tests on the same host at the same time: only segments owned (by the
pid in their name) by this process or by a process it started count as ours, and only ours
are ever removed here.
"""

from __future__ import annotations

import gc
import multiprocessing.process
import os
import subprocess
import time

import pytest

from ipc import liveness, shared
from ipc.names import ShmName, parse_name

SHM = "/dev/shm"

_started: set[int] = {os.getpid()}
_mp_start = multiprocessing.process.BaseProcess.start
_popen_init = subprocess.Popen.__init__


def _recording_mp_start(self):
    _mp_start(self)
    if self.pid:
        _started.add(self.pid)


def _recording_popen_init(self, *a, **kw):
    _popen_init(self, *a, **kw)
    if getattr(self, "pid", None):
        _started.add(self.pid)


multiprocessing.process.BaseProcess.start = _recording_mp_start
subprocess.Popen.__init__ = _recording_popen_init


def _entries() -> dict[str, ShmName]:
    """Our runnerlib entries in /dev/shm (by the pid in their name: this process and the ones
    it started)."""
    try:
        names = os.listdir(SHM)
    except FileNotFoundError:
        return {}
    parsed = {n: parse_name(n) for n in names}
    return {n: p for n, p in parsed.items() if p is not None and p.pid in _started}


def _ours() -> set[str]:
    """Our segments and FIFOs; liveness locks are not leftovers by themselves (a process
    keeps its lock while it lives, and a dead one's is removed by _tidy_locks)."""
    return {n for n, p in _entries().items() if not p.is_lock}


def _tidy_locks() -> None:
    """Remove the liveness locks of our dead processes that own nothing any more (a forked
    child exits without atexit, a killed one cannot run it)."""
    entries = _entries()
    owning = {p.owner for p in entries.values() if not p.is_lock}
    for p in entries.values():
        if p.is_lock and p.owner not in owning:
            liveness.probe_dead(p.owner, lambda: None)


def _worker_children() -> list[int]:
    me = str(os.getpid())
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if fields[1].decode() != me or fields[0] in (b"Z", b"X"):
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"runnerlib._shm.worker" in f.read():
                    found.append(int(pid))
        except (OSError, IndexError):
            continue
    return found


@pytest.fixture(autouse=True, scope="session")
def _private_runtime(tmp_path_factory: pytest.TempPathFactory):
    os.environ["RUNNERLIB_RUNTIME_DIR"] = str(tmp_path_factory.mktemp("runtime"))
    os.environ["RUNNERLIB_NAMESPACE"] = f"test-{os.getpid()}"
    yield


@pytest.fixture(autouse=True)
def _no_leftovers():
    before = _ours()
    yield
    gc.collect()
    shared.trim(everything=True)  # what this process let go of, kept warm for reuse
    deadline = time.monotonic() + 10
    while True:
        left = _ours() - before
        workers = _worker_children()
        if not left and not workers:
            _tidy_locks()
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for name in left:  # keep later tests clean, then fail this one
        try:
            os.unlink(os.path.join(SHM, name))
        except OSError:
            pass
    pytest.fail(f"left behind: segments {sorted(left)}, worker processes {workers}")
