"""Whether namespace tests can run here (root, util-linux unshare, mounts allowed)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys


@functools.cache
def why_not() -> str | None:
    if not sys.platform.startswith("linux"):
        return "Linux namespaces only"
    if os.geteuid() != 0:
        return "needs root (unshare --pid --mount and tmpfs mounts)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc",
         "sh", "-c", "mount -t tmpfs tmpfs /dev/shm && echo 1 > /proc/sys/kernel/ns_last_pid"],
        capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return f"cannot make namespaces here: {probe.stderr.strip()}"
    return None
