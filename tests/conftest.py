"""Suite-wide isolation: a private runtime dir and namespace, and a check after every test
that no shared-memory segment and no worker process was left behind."""

from __future__ import annotations

import os
import time

import pytest

SHM = "/dev/shm"


def _ours() -> set[str]:
    try:
        return {n for n in os.listdir(SHM) if n.startswith("rl.")}
    except FileNotFoundError:
        return set()


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
                if b"runnerlib.worker" in f.read():
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
    deadline = time.monotonic() + 10
    while True:
        left = _ours() - before
        workers = _worker_children()
        if not left and not workers:
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
