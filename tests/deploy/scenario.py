"""One deployment scenario, run by test_namespaces.py inside a private mount namespace
(``unshare --mount --propagation private python scenario.py NAME ROOT``).

It mounts a fresh tmpfs on /dev/shm and one on ROOT (the runtime directory's parent), seen only
by this process and its children, so nothing on the host is touched and every entry in /dev/shm
belongs to the scenario. Each party (server, client, cleanup) then runs in a PID namespace of
its own (``unshare --pid --mount-proc``, which copies these mounts: all parties share /dev/shm
and the runtime directory, as a sidecar container does, but not their pids). The server runs
as pid 5000 of its namespace; other namespaces either have no pid 5000 or a live decoy on it.

Exit status 0 when the scenario holds; otherwise the reason is on stderr.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHM = "/dev/shm"
SERVER_PID = 5000
EVENT_TIMEOUT = 180.0
RUNNER = "deployed"


class Party:
    """One process in a PID namespace of its own, speaking JSON lines on stdout."""

    def __init__(self, env: dict[str, str], *cmd: str, pid: int | None = None,
                 decoy: int | None = None, role: bool = True) -> None:
        opts: list[str] = []
        if decoy is not None:
            opts += ["--decoy", str(decoy)]
        if pid is not None:
            opts += ["--pid", str(pid)]
        argv = [sys.executable, os.path.join(HERE, "deploy_roles.py"), *cmd] if role else list(cmd)
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
             sys.executable, os.path.join(HERE, "nsboot.py"), *opts, "--", *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1)
        self.lines: list[str] = []

    def event(self, timeout: float = EVENT_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no event within {timeout} s; output so far: {self.lines}")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"exited ({self.proc.wait()}) before its event; "
                                     f"output: {self.lines}")
            self.lines.append(line.rstrip())
            try:
                return json.loads(line)
            except ValueError:
                continue

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = EVENT_TIMEOUT) -> str:
        out, _ = self.proc.communicate(timeout=timeout)
        self.lines += out.splitlines()
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # unshare --kill-child: the namespace's pid 1 dies, and with it all
        self.proc.wait()


def mount_private(root: str) -> dict[str, str]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777,size=512m", "tmpfs", SHM],
                   check=True)
    os.makedirs(root, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700,size=16m", "tmpfs", root],
                   check=True)
    env = dict(os.environ)
    env["RUNNERLIB_RUNTIME_DIR"] = os.path.join(root, "rt")
    env["RUNNERLIB_NAMESPACE"] = "deploy"
    env["PYTHONPATH"] = os.pathsep.join([HERE, *filter(None, [env.get("PYTHONPATH")])])
    env.pop("XDG_RUNTIME_DIR", None)
    return env


def record_path(env: dict[str, str], runner: str = RUNNER) -> str:
    return os.path.join(env["RUNNERLIB_RUNTIME_DIR"], "deploy", f"{runner}.json")


def entries() -> set[str]:
    return set(os.listdir(SHM))


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def start_server(env: dict[str, str]) -> tuple[Party, dict]:
    server = Party(env, "server", RUNNER, pid=SERVER_PID)
    ready = server.event()
    check(ready.get("pid") == SERVER_PID, f"server not at pid {SERVER_PID}: {ready}")
    return server, ready


def stop_server(server: Party) -> None:
    server.send("stop")
    check(server.event().get("stopped") is True, "server did not stop")
    server.finish()


def sidecar(env: dict[str, str]) -> None:
    """A client in another PID namespace sees the server alive, calls it (twice, across the
    supervisor's client-reclaim rounds), and leaves its record in place."""
    server, ready = start_server(env)
    try:
        client = Party(env, "client", RUNNER, "hold", pid=300)
        seen = client.event()
        out = client.finish()
        check("error" not in seen, f"the client could not attach: {seen.get('error')}\n{out}")
        check(seen.get("control") == ready["control"],
              f"the client attached to {seen.get('control')}, not to the server's "
              f"{ready['control']}")
        check(seen.get("results") == [42, 42], f"calls answered {seen.get('results')}")
        check(os.path.exists(record_path(env)), "the client deleted the live server's record")
        stop_server(server)
    finally:
        server.kill()
    check(not entries(), f"left in /dev/shm: {sorted(entries())}")


def cleanup_elsewhere(env: dict[str, str]) -> None:
    """``python -m runnerlib cleanup`` and a second server start in other PID namespaces leave
    the live server's segments alone; the server keeps serving."""
    server, ready = start_server(env)
    try:
        before = entries()
        check(any(ready["control"].lstrip("/") == e for e in before), "no control segment?")
        cli = Party(env, sys.executable, "-m", "runnerlib", "cleanup", role=False, pid=400)
        out = cli.finish()
        gone = before - entries()
        check(not gone, f"cleanup in another PID namespace removed live entries {sorted(gone)}"
                        f"\n{out}")
        again = Party(env, "serve-again", RUNNER, "other", pid=500)
        first = again.event()
        check(first.get("already_served") is True,
              f"a second server did not see the live one: {first}")
        check(again.event().get("other_served") is True, "the other runner was not served")
        again.finish()
        gone = before - entries()
        check(not gone, f"a server start in another PID namespace removed live entries "
                        f"{sorted(gone)}")
        check(os.path.exists(record_path(env)), "the live server's record was removed")
        client = Party(env, "client", RUNNER, pid=600)
        seen = client.event()
        client.finish()
        check(seen.get("results") == [42], f"the server no longer serves: {seen}")
        stop_server(server)
    finally:
        server.kill()
    check(not entries(), f"left in /dev/shm: {sorted(entries())}")


def killed(env: dict[str, str], how: str) -> None:
    """After the server is SIGKILLed, cleanup from another PID namespace, where a live process
    has the dead server's pid number, removes its segments: its lock proves it dead."""
    server, ready = start_server(env)
    try:
        before = entries()
        server.send("die")
        code = server.proc.wait(timeout=EVENT_TIMEOUT)
        check(code != 0, f"the server exited with {code}")
    finally:
        server.kill()
    check(before <= entries(), "something removed the dead server's entries already")
    if how == "cli":
        cli = Party(env, sys.executable, "-m", "runnerlib", "cleanup", role=False,
                    decoy=SERVER_PID, pid=SERVER_PID + 1)
        out = cli.finish()
    else:
        again = Party(env, "serve-again", RUNNER, "other", decoy=SERVER_PID, pid=SERVER_PID + 1)
        first = again.event()
        check(first.get("already_served") is False,
              f"the dead server was taken for a live one: {first}")
        again.event()
        out = again.finish()
    left = before & entries()
    check(not left, f"the dead server's entries were left: {sorted(left)}\n{out}")


def main() -> int:
    name, root = sys.argv[1], sys.argv[2]
    env = mount_private(root)
    os.environ.update(env)
    {"sidecar": sidecar, "cleanup-elsewhere": cleanup_elsewhere,
     "killed-cli": lambda e: killed(e, "cli"),
     "killed-server-start": lambda e: killed(e, "server-start")}[name](env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
