"""Processes in different PID namespaces that share /dev/shm and the runtime directory (a sidecar
container without a shared process namespace, a server started in another container) see each
other correctly, and cleanup removes only what is provably dead (issue 14, case 2).

Each test runs scenario.py inside a private mount namespace with its own tmpfs /dev/shm and
runtime directory, so it never touches the host's; the parties inside run in PID namespaces of
their own with colliding pid numbers (scenario.py). Needs root and util-linux's unshare.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from nsutil import why_not

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(name: str, tmp_path, script: str = "scenario.py") -> None:
    reason = why_not()
    if reason:
        pytest.skip(reason)
    args = [name] if script == "scenario.py" else []
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--kill-child",
         sys.executable, os.path.join(HERE, script), *args, str(tmp_path / "mnt")],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (
        f"scenario {name} failed ({proc.returncode}):\n{proc.stderr[-6000:]}\n"
        f"{proc.stdout[-3000:]}")


def test_a_client_in_another_pid_namespace_sees_the_server_alive_and_calls_it(tmp_path):
    _run("sidecar", tmp_path)


def test_cleanup_and_a_server_start_in_another_pid_namespace_leave_live_segments(tmp_path):
    _run("cleanup-elsewhere", tmp_path)


@pytest.mark.parametrize("how", ["cli", "server-start"])
def test_a_killed_servers_segments_are_removed_from_another_pid_namespace(tmp_path, how):
    _run(f"killed-{how}", tmp_path)


@pytest.mark.soak
def test_reservations_of_producers_in_another_pid_namespace_are_respected(tmp_path):
    """Large and small calls at once from another pid namespace all get their own answers
    (ring_race_scenario.py). In the soak group: about a minute of two busy clients."""
    _run("ring-race", tmp_path, "ring_race_scenario.py")
