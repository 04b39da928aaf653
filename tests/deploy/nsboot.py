"""pid 1 of a test PID namespace: start a command under a chosen pid, and stand a decoy on
another pid number (to make pid numbers collide across namespaces on purpose).

    unshare --pid --fork --kill-child --mount-proc python nsboot.py [--decoy N] [--pid M] -- CMD

``--decoy N`` starts a ``sleep`` as pid N of this namespace: a live process with the number
that another namespace's (dead or alive) process has. ``--pid M`` starts CMD as pid M. The
pids are chosen by writing /proc/sys/kernel/ns_last_pid (root in the namespace). Exits with
CMD's status; the kernel then kills whatever else runs in the namespace.
"""

from __future__ import annotations

import subprocess
import sys


def _next_pid(pid: int) -> None:
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))


def main(argv: list[str]) -> int:
    sep = argv.index("--")
    opts, cmd = argv[:sep], argv[sep + 1:]
    decoy = None
    for flag, value in zip(opts[::2], opts[1::2], strict=True):
        if flag == "--decoy":
            _next_pid(int(value))
            decoy = subprocess.Popen(["sleep", "600"])
            assert decoy.pid == int(value), (decoy.pid, value)
        elif flag == "--pid":
            _next_pid(int(value))
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    finally:
        if decoy is not None:
            decoy.kill()
            decoy.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
