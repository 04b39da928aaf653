"""The runtime directory cannot be squatted or redirected by another user (issue 14, case 6).

The default location under /tmp is attacked inside a private mount namespace with its own
tmpfs /tmp and /dev/shm (runtime_dir_scenario.py; needs root). The choice of directory and the
refusal of a link given as RUNNERLIB_RUNTIME_DIR are checked in this process.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from nsutil import why_not

from runnerlib import registry

HERE = os.path.dirname(os.path.abspath(__file__))


def test_a_squatted_or_linked_tmp_dir_is_skipped_and_nothing_is_followed():
    reason = why_not()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--kill-child",
         sys.executable, os.path.join(HERE, "runtime_dir_scenario.py")],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stderr[-6000:]}\n{proc.stdout[-2000:]}"


def test_xdg_runtime_dir_is_used_when_set(tmp_path, monkeypatch):
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.delenv("RUNNERLIB_RUNTIME_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert registry.root_dir() == xdg / "runnerlib"
    st = os.stat(xdg / "runnerlib")
    assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700


def test_a_link_given_as_the_runtime_dir_is_refused_not_followed(tmp_path, monkeypatch):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    (tmp_path / "link").symlink_to(target)
    monkeypatch.setenv("RUNNERLIB_RUNTIME_DIR", str(tmp_path / "link"))
    with pytest.raises(PermissionError, match="symbolic link"):
        registry.find("anything")
    assert stat.S_IMODE(target.stat().st_mode) == 0o755 and not list(target.iterdir())


def test_an_open_runtime_dir_of_ours_is_made_private_through_its_descriptor(tmp_path,
                                                                              monkeypatch):
    rt = tmp_path / "rt"
    rt.mkdir()
    rt.chmod(0o755)
    monkeypatch.setenv("RUNNERLIB_RUNTIME_DIR", str(rt))
    assert registry.find("anything") is None
    assert stat.S_IMODE(rt.stat().st_mode) == 0o700
    assert stat.S_IMODE((rt / registry.namespace()).stat().st_mode) == 0o700


def test_a_link_planted_in_place_of_a_record_is_not_read_and_is_replaced(tmp_path, monkeypatch):
    rt = tmp_path / "rt"
    monkeypatch.setenv("RUNNERLIB_RUNTIME_DIR", str(rt))
    ns_dir = registry.namespace_dir()
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    (ns_dir / "linked.json").symlink_to(victim)
    assert registry.find("linked") is None
    info = registry.ServerInfo(runner="linked", namespace=registry.namespace(), server_pid=1,
                               control="/rl.1.0123456789abcdef.ctl",
                               request_ring="/rl.1.0123456789abcdef.req", class_ref="m:C",
                               methods=["f"], started=0.0)
    registry.publish(info)
    assert victim.read_text() == "precious"
    assert not (ns_dir / "linked.json").is_symlink()
    assert registry.find("linked") is None  # its server (no liveness lock) is not alive
    assert not (ns_dir / "linked.json").exists()
