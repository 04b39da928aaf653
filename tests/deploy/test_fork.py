"""fork() after init_client() (gunicorn --preload, multiprocessing's fork start method), with
real processes: the child gets channels of its own and correct answers, its exit (normal,
os._exit, a multiprocessing Process) leaves the parent's embedded server and channels alone,
no answer reaches another call, and nothing is left in /dev/shm once everything stopped.

The scenario runs in a fresh interpreter (fork_script.py), so that the child's normal exit
runs atexit hooks and finalizers as in a real application, and never runs pytest's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "fork_script.py")


def _left_behind(pids: list[int]) -> list[str]:
    owners = {str(p) for p in pids}
    return sorted(n for n in os.listdir("/dev/shm")
                  if n.startswith("rl.") and n.split(".")[1] in owners)


def _run(mode: str, threads: bool, locked: bool = False) -> dict:
    proc = subprocess.run(
        [sys.executable, SCRIPT, mode, "threads" if threads else "nothreads",
         "locked" if locked else "unlocked"],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, (
        f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(lines[-1][len("REPORT "):])


@pytest.mark.parametrize(("mode", "threads", "locked"), [
    ("sys_exit", False, False), ("sys_exit", True, False), ("os_exit", True, False),
    ("mp_fork", True, False), ("os_exit", True, True)])
def test_a_forked_child_has_its_own_channels_and_leaves_the_parent_serving(
        mode, threads, locked):
    """``locked``: the fork happens while the runtime's locks (the handle's, its handoff
    pool's and reader's, every codec cache's) are held, as another thread of the parent may
    hold them at that moment: the child must not deadlock on them."""
    r = _run(mode, threads, locked)
    child = r["child_report"]
    # the child: correct answers, on a channel slot of its own
    assert "error" not in child, (child["error"], r["child_exit"])
    assert child["bad"] == [] and child["calls"] >= 40, child
    assert child["slot"] != r["parent_slot"], r
    assert r["child_exit"] == 0
    # the parent: every call of every thread, during the child's life and after it, got its
    # own answer; its server still serves and its channel is still its own
    assert r["main_bad"] == [], r["main_bad"][:5]
    for t in r["threads"]:
        assert t["bad"] == [] and t["calls"] > 3, t["bad"][:5]
    assert r["server_state"] == 1, r  # READY
    assert all(r["workers_alive"]), r
    assert (r["parent_slot_owner"], r["parent_slot_state"]) == (r["parent"], 2), r
    # the child's channel went back (its own exit, or the supervisor's reclaim)
    assert r["child_slots_left"] == [], r
    # once the parent stopped its server: nobody's segments remain
    pids = [r["parent"], r["child"], *r["workers"]]
    deadline = time.monotonic() + 10
    while _left_behind(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _left_behind(pids) == []
