"""Isolation (SPEC 9): a process running as another user cannot open any segment or doorbell
FIFO of a running server, for reading or for writing."""

from __future__ import annotations

import os
import stat

import pytest
from soak_runnables import soak_runner

import runnerlib

NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root "
                    "(os.setuid); as a normal user there is no other uid to become")
def test_another_user_cannot_open_any_segment():
    runner = soak_runner("isolated")
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        assert runner.echo.run(1) == 1  # a channel ring and bell exist too
        mine = [n for n in os.listdir("/dev/shm")
                if n.startswith(f"rl.{os.getpid()}.")]
        assert {n.rsplit(".", 1)[-1] for n in mine} >= {"ctl", "req", "ch", "bell"}, mine
        for n in mine:
            st = os.lstat("/dev/shm/" + n)
            assert stat.S_IMODE(st.st_mode) == 0o600, (n, oct(st.st_mode))
            assert st.st_uid == os.getuid()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: become nobody, then try every name every way
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                opened = []
                import posix_ipc

                for n in mine:
                    for flags in (os.O_RDONLY, os.O_RDWR, os.O_WRONLY | os.O_NONBLOCK):
                        try:
                            fd = os.open("/dev/shm/" + n, flags)
                            os.close(fd)
                            opened.append(f"open {n} {flags}")
                        except OSError:
                            pass
                    if not n.endswith(".bell"):
                        try:
                            posix_ipc.SharedMemory("/" + n, read_only=True).close_fd()
                            opened.append(f"shm_open {n}")
                        except Exception:
                            pass
                os.write(w, ("\n".join(opened) or "none").encode())
            finally:
                os._exit(0)
        os.close(w)
        got = b""
        while chunk := os.read(r, 65536):
            got += chunk
        os.close(r)
        os.waitpid(pid, 0)
        runner.destroy()
    assert got == b"none", got.decode()
