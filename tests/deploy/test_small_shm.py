"""Issue 14.1: Docker's default 64 MiB /dev/shm. In a private mount namespace (so the host's
/dev/shm is never touched) with a 64 MiB tmpfs on /dev/shm and a tmpfs runtime directory, an
embedded server starts within the default shared-memory budget, serves small calls and a
4 MiB call, refuses a 100 MiB argument with a RunnerError naming the limit and the fix (and
keeps serving), and ``status`` shows the budget and the use (small_shm_script.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import runnerlib

HERE = os.path.dirname(os.path.abspath(__file__))


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root and `unshare --mount` to mount a "
                    "private 64 MiB tmpfs on /dev/shm")
def test_a_server_serves_in_a_64_mib_dev_shm(tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    script = os.path.join(HERE, "small_shm_script.py")
    env = {k: v for k, v in os.environ.items() if k != "RUNNERLIB_SHM_BUDGET"}
    env.update(PYTHONPATH=os.pathsep.join(sys.path), RUNNERLIB_RUNTIME_DIR=str(runtime))
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         "mount -t tmpfs -o size=64m,mode=1777 tmpfs /dev/shm && "
         f"mount -t tmpfs -o size=16m,mode=0700 tmpfs {runtime} && "
         f"exec {sys.executable} {script}"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "ALL OK" in proc.stdout, (
        f"rc={proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


@pytest.mark.parametrize(("text", "nbytes"), [
    (67108864, 64 << 20), ("67108864", 64 << 20), ("64Mi", 64 << 20), ("512MiB", 512 << 20),
    ("1Gi", 1 << 30), ("1G", 10**9), ("1GB", 10**9), ("1.5Gi", 3 << 29), ("2KiB", 2048)])
def test_shm_budget_sizes_are_read_as_kubernetes_quantities(text, nbytes):
    from runnerlib.config import parse_size

    assert parse_size(text) == nbytes


@pytest.mark.parametrize("text", ["lots", "1iB", "-1", "0", "1Q", True, 1.5, ""])
def test_a_bad_shm_budget_is_a_config_error_naming_the_key(text):
    from runnerlib.config import parse_config

    with pytest.raises(runnerlib.ConfigError, match="shm_budget"):
        parse_config({"shm_budget": text})


def test_the_environment_overrides_the_file_and_options_set_it(monkeypatch):
    from runnerlib.config import SHM_BUDGET_ENV, load_config, shm_budget

    cfg = load_config({"shm_budget": "64Mi"})
    monkeypatch.delenv(SHM_BUDGET_ENV, raising=False)
    assert shm_budget(cfg) == 64 << 20
    assert shm_budget(load_config({}, options="shm_budget=1Gi")) == 1 << 30
    monkeypatch.setenv(SHM_BUDGET_ENV, "128Mi")
    assert shm_budget(cfg) == 128 << 20
    monkeypatch.setenv(SHM_BUDGET_ENV, "plenty")
    with pytest.raises(runnerlib.ConfigError, match=SHM_BUDGET_ENV):
        shm_budget(cfg)


def test_sizes_follow_the_budget_and_never_exceed_todays():
    from runnerlib._shm import budget
    from runnerlib._shm.supervisor import REQUEST_RING_BYTES

    small = budget.plan(32 << 20, request_cap=REQUEST_RING_BYTES)  # a 64 MiB /dev/shm
    assert (small.request_ring, small.channel_ring, small.handoff_keep,
            small.message_limit) == (8 << 20, 2 << 20, 1, 8 << 20)
    two = budget.plan(32 << 20, 2, request_cap=REQUEST_RING_BYTES)  # split between runners
    assert two.request_ring == 4 << 20 and two.message_limit == 4 << 20
    roomy = budget.plan(64 << 30, request_cap=REQUEST_RING_BYTES)
    assert roomy.request_ring == REQUEST_RING_BYTES and roomy.handoff_keep == 2
