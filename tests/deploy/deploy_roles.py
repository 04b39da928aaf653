"""The processes of the deployment tests, each run as ``python deploy_roles.py ROLE ...``
inside its own PID namespace (nsboot.py). Each prints one JSON line per event on stdout.

- ``server NAME``: serve runner NAME, print ``{"ready": ...}``, then obey stdin: ``stop`` (a
  clean stop) or ``die`` (SIGKILL itself, as the OOM killer would);
- ``client NAME``: attach without spawning, call, print what it saw;
- ``serve-again NAME OTHER``: try to serve NAME (must find it served) and serve OTHER (whose
  start runs the stale-segment cleanup), then stop.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import runnerlib
from runnerlib import registry


class Doubler(runnerlib.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    @runnerlib.Runnable.method
    def double(self, x):
        return 2 * x


def _runner(name: str) -> runnerlib.Runner:
    return runnerlib.Runner(Doubler, name=name, cpu=1)


def _say(**kw: object) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def serve(name: str) -> None:
    server = runnerlib.Server([_runner(name)])
    server.start()
    info = registry.find(name)
    assert info is not None
    _say(ready=True, pid=os.getpid(), control=info.control, request_ring=info.request_ring)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if cmd == "stop":
            break
    server.stop()
    _say(stopped=True)


def client(name: str, hold: str = "") -> None:
    """Attach without spawning and call; with ``hold``, call again after 2.5 s, long enough
    for the supervisor to judge this client's liveness twice (it does so every second)."""
    runner = _runner(name)
    try:
        runner.init_client(spawn=False)
    except runnerlib.RunnerError as exc:
        _say(error=f"{type(exc).__name__}: {exc}")
        return
    try:
        info = runner._handle.info
        results = [runner.double.run(21)]
        if hold:
            time.sleep(2.5)
            try:
                results.append(runner.double.run(21, _timeout=30))
            except runnerlib.RunnerError as exc:
                results.append(f"{type(exc).__name__}: {exc}")
        _say(control=info.control, results=results, pid=os.getpid())
    finally:
        runner.destroy()


def serve_again(name: str, other: str) -> None:
    try:
        again = runnerlib.Server([_runner(name)])
        again.start()
        again.stop()
        _say(already_served=False)
    except runnerlib.RunnerError as exc:
        _say(already_served="already served" in str(exc), message=str(exc))
    server = runnerlib.Server([_runner(other)])
    server.start()
    server.stop()
    _say(other_served=True)


if __name__ == "__main__":
    import deploy_roles  # the Runnable as deploy_roles:Doubler, whoever runs it

    role, *args = sys.argv[1:]
    roles = {"server": deploy_roles.serve, "client": deploy_roles.client,
             "serve-again": deploy_roles.serve_again}
    roles[role](*args)
