"""Fixtures shared by the ipc tests: every test must leave /dev/shm as it found it."""

from __future__ import annotations

import multiprocessing.process
import os

import pytest

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


def _owner(name: str) -> int | None:
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "rl" and parts[1].isdigit():
        return int(parts[1])
    return None


def _ours() -> set[str]:
    mine = {os.getpid()} | _started_pids
    try:
        return {n for n in os.listdir(SHM) if _owner(n) in mine}
    except OSError:
        return set()


@pytest.fixture(autouse=True)
def no_leaked_segments():
    """Fail the test if it leaves new /dev/shm/rl.* segments or FIFOs behind."""
    before = _ours()
    yield
    leaked = sorted(_ours() - before)
    for name in leaked:
        try:
            os.unlink(os.path.join(SHM, name))
        except OSError:
            pass
    if leaked:
        pytest.fail(f"test left shared-memory entries behind: {leaked}")
