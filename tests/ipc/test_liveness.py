"""Owner locks (ipc.liveness) and the one name parser (ipc.names), with real processes.

The cross-pid-namespace cases are in tests/deploy/test_namespaces.py (root); here: the lock's
life, fork, and what cleanup does with entries that have no lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ipc import liveness
from ipc.names import SHM_DIR, Owner, parse_name
from ipc.segment import Segment, cleanup_stale

# A child that becomes an owner, forks a grandchild that also becomes one, reports both,
# then waits to be killed. Run with -c so it is a plain exec'd process.
_FAMILY = textwrap.dedent("""
    import os, sys, time
    from ipc import liveness
    me = liveness.me()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        kid = liveness.me()
        os.write(w, f"{kid.pid} {kid.id}\\n".encode())
        time.sleep(120)
        os._exit(0)
    os.close(w)
    kid = os.read(r, 100).decode().split()
    print(me.pid, me.id, kid[0], kid[1], flush=True)
    time.sleep(120)
""")


def _wait(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_parse_name_reads_segments_fifos_and_locks():
    seg = parse_name("/rl.42.0123456789abcdef.ctl")
    assert seg is not None and seg.is_segment and seg.tag == "ctl"
    assert seg.owner == Owner(42, "01234567") and seg.entry == "rl.42.0123456789abcdef.ctl"
    assert parse_name("rl.42.0123456789abcdef").tag == ""
    bell = parse_name("rl.42.0123456789abcdef.bell")
    assert bell is not None and bell.is_bell and not bell.is_segment
    lock = parse_name("rl.42.01234567.live")
    assert lock is not None and lock.is_lock and lock.owner == Owner(42, "01234567")
    assert lock.owner.lock_name == "rl.42.01234567.live"
    for bad in ("rl.42.01234567", "rl.42.0123456789abcdef.live", "rl.0.0123456789abcdef",
                "rl.x.0123456789abcdef", "rl.42.0123456789ABCDEF", "other", "rl.42.0123.live",
                "rl.99999999999.0123456789abcdef", "rl.42.0123456789abcdef.a/b"):
        assert parse_name(bad) is None, bad


def test_names_start_with_the_owner_id_and_the_lock_is_held():
    seg = Segment.create(4096, tag="t")
    try:
        me = liveness.me()
        parsed = parse_name(seg.name)
        assert parsed.owner == me and me.pid == os.getpid()
        assert os.path.exists(os.path.join(SHM_DIR, me.lock_name))
        assert liveness.is_mine(seg.name) and liveness.owner_alive(seg.name)
        # another process probes: held
        out = subprocess.run(
            [sys.executable, "-c", "import sys; from ipc import liveness; "
             "print(liveness.verdict(sys.argv[1]).value)", seg.name],
            capture_output=True, text=True, timeout=60, check=True)
        assert out.stdout.strip() == "alive"
    finally:
        seg.close()
        seg.unlink()


def test_a_forked_child_is_its_own_owner_and_never_keeps_the_parent_alive():
    proc = subprocess.Popen([sys.executable, "-c", _FAMILY], stdout=subprocess.PIPE, text=True)
    try:
        ppid, pid_, kpid, kid_ = proc.stdout.readline().split()
        parent, kid = Owner(int(ppid), pid_), Owner(int(kpid), kid_)
        assert parent != kid and parent.pid == proc.pid
        assert liveness.verdict(parent) is liveness.Verdict.ALIVE
        assert liveness.verdict(kid) is liveness.Verdict.ALIVE
        os.kill(proc.pid, signal.SIGKILL)  # the parent dies; its forked child lives on
        proc.wait()
        assert liveness.verdict(parent) is liveness.Verdict.DEAD
        assert liveness.verdict(kid) is liveness.Verdict.ALIVE
        assert liveness.probe_dead(parent, lambda: None)
        assert liveness.verdict(parent) is liveness.Verdict.GONE  # its lock file was removed
        assert not liveness.probe_dead(kid, lambda: None)
        os.kill(kid.pid, signal.SIGKILL)
        _wait(lambda: liveness.verdict(kid) is liveness.Verdict.DEAD)
        assert liveness.probe_dead(kid, lambda: None)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_clean_exit_with_nothing_left_removes_the_lock():
    out = subprocess.run(
        [sys.executable, "-c", "from ipc.segment import Segment; s = Segment.create(4096); "
         "s.close(); s.unlink(); from ipc import liveness; print(liveness.me().lock_name)"],
        capture_output=True, text=True, timeout=60, check=True)
    assert not os.path.exists(os.path.join(SHM_DIR, out.stdout.strip()))


def test_entries_without_a_lock_are_left_unless_legacy_and_their_pid_is_dead():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    legacy = os.path.join(SHM_DIR, f"rl.{dead.pid}.{os.urandom(8).hex()}.bell")
    os.mkfifo(legacy, 0o600)
    try:
        assert parse_name(os.path.basename(legacy)) is not None
        assert liveness.verdict(os.path.basename(legacy)) is liveness.Verdict.GONE
        assert os.path.basename(legacy) not in cleanup_stale()
        assert os.path.exists(legacy)
        assert os.path.basename(legacy) in cleanup_stale(legacy=True)
        assert not os.path.exists(legacy)
    finally:
        if os.path.exists(legacy):
            os.unlink(legacy)


@pytest.mark.parametrize("what", ["a foreign name", "an unjudgeable lock"])
def test_what_cannot_be_judged_is_alive(what, tmp_path):
    if what == "a foreign name":
        assert liveness.verdict("/not-ours") is liveness.Verdict.ALIVE
        return
    owner = Owner(os.getpid(), os.urandom(4).hex())
    path = os.path.join(SHM_DIR, owner.lock_name)
    os.mkfifo(path, 0o600)  # not a regular file: not a lock of ours
    try:
        assert liveness.verdict(owner) is liveness.Verdict.ALIVE
        assert not liveness.probe_dead(owner, lambda: None)
    finally:
        os.unlink(path)
