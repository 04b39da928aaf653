"""Fixtures shared by the ipc tests: every test must leave /dev/shm as it found it."""

from __future__ import annotations

import gc
import multiprocessing.process
import os

import pytest

from ipc import shared
from ipc.names import parse_name

SHM = "/dev/shm"

# Other sessions may run tests on the same host at the same time: only entries owned by this
# process or by processes it started count as ours.
_started_pids: set[int] = set()
_original_start = multiprocessing.process.BaseProcess.start


def _recording_start(self):
    _original_start(self)
    if self.pid:
        _started_pids.add(self.pid)


multiprocessing.process.BaseProcess.start = _recording_start


def _ours() -> set[str]:
    """Our segments and FIFOs (liveness locks live as long as their process: not counted)."""
    mine = {os.getpid()} | _started_pids
    try:
        names = os.listdir(SHM)
    except OSError:
        return set()
    parsed = {n: parse_name(n) for n in names}
    return {n for n, p in parsed.items() if p is not None and p.pid in mine and not p.is_lock}


@pytest.fixture(autouse=True)
def no_leaked_segments():
    """Fail the test if it leaves new /dev/shm/rl.* segments or FIFOs behind."""
    before = _ours()
    yield
    gc.collect()
    shared.trim(everything=True)  # shared arrays let go of, kept warm for reuse
    leaked = sorted(_ours() - before)
    for name in leaked:
        try:
            os.unlink(os.path.join(SHM, name))
        except OSError:
            pass
    if leaked:
        pytest.fail(f"test left shared-memory entries behind: {leaked}")
