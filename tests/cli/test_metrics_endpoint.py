"""``python -m runnerlib serve --metrics-port PORT``: ``/metrics`` through prometheus-client,
and ``/readyz`` / ``/livez`` probes for Kubernetes, over 127.0.0.1 with a real serve process
(SPEC 10)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import cli_app
import numpy as np
import pytest
from test_cli import HERE, START_DEADLINE, _env, cli, client_of, serve  # noqa: F401

from runnerlib import stats

pytest.importorskip("prometheus_client")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_answer(port: int, path: str, deadline: float = START_DEADLINE) -> tuple[int, str]:
    end = time.monotonic() + deadline
    while True:
        try:
            return get(port, path)
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < end, f"nothing answers on port {port}"
            time.sleep(0.05)


def metric(text: str, name: str, runner: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'runner="{runner}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} of {runner} not in:\n{text}")


def test_metrics_and_probes(tmp_path, client_of):  # noqa: F811
    port = _free_port()
    with serve(tmp_path, "cli_app:runners", ["cli-doubler", "cli-echo"],
               "--metrics-port", str(port), "--metrics-host", "127.0.0.1") as served:
        assert get(port, "/livez") == (200, "live\n")
        assert get(port, "/healthz")[0] == 200
        end = time.monotonic() + 60
        while get(port, "/readyz")[0] != 200:
            assert time.monotonic() < end, get(port, "/readyz")
            time.sleep(0.1)
        assert get(port, "/readyz") == (200, "ready\n")

        runner = client_of(cli_app.runner)
        for i in range(3):
            runner.predict.run(np.ones((2, 2), dtype=np.float32) * i)
        echo = client_of(cli_app.echo)
        assert echo.run("x") == "x" and echo.run(1) == 1 and echo.run("y") == "y"
        code, text = get(port, "/metrics")
        assert code == 200
        assert metric(text, "runnerlib_requests_total", "cli-doubler") == 3
        assert metric(text, "runnerlib_requests_total", "cli-echo") == 3
        assert metric(text, "runnerlib_worker_up", "cli-doubler") == 1
        assert "runnerlib_latency_seconds_bucket{" in text
        assert "process_cpu_seconds_total" in text  # prometheus-client's process collector
        # a metric the Runnable made with runnerlib.metrics, in its worker process
        assert 'cli_app_echoes_total{kind="str"} 2.0' in text, text
        assert 'cli_app_echoes_total{kind="int"} 1.0' in text
        # the same text the status command renders, from the same counters
        assert "runnerlib_requests_total" in cli("status", "--prometheus").stdout
        assert get(port, "/nothing-here")[0] == 404
        assert served.stop(signal.SIGTERM) == 0
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        get(port, "/livez")


def test_not_ready_while_the_workers_start(tmp_path):
    port = _free_port()
    log = tmp_path / "slow.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runnerlib", "serve", "cli_app:slow", "--metrics-port",
             str(port), "--metrics-host", "127.0.0.1"],
            cwd=HERE, env=_env(CLI_SLOW_SECONDS="4"), stdout=f, stderr=subprocess.STDOUT,
        )
    try:
        code, text = wait_answer(port, "/readyz")
        assert code == 503 and "cli-slow" in text, text
        assert get(port, "/livez")[0] == 200  # alive while it loads
        end = time.monotonic() + START_DEADLINE
        while get(port, "/readyz")[0] != 200:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < end, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_port_in_use_is_a_usage_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = cli("serve", "cli_app:echo", "--metrics-port", str(port),
                  "--metrics-host", "127.0.0.1")
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"--metrics-port {port}: cannot listen" in out.stderr


def test_readiness_rules():
    worker = {"state": "ready"}
    snap = {"runner": "a", "state": "ready", "workers": [worker]}
    assert stats.readiness([snap], ["a"]) == (True, "ready")
    ok, why = stats.readiness([snap], ["a", "b"])
    assert not ok and "b: not served yet" in why
    ok, why = stats.readiness([{**snap, "workers": [{"state": "starting"}]}], ["a"])
    assert not ok and "no worker ready" in why
    ok, why = stats.readiness([{**snap, "state": "stopping"}], ["a"])
    assert not ok and "server stopping" in why
    ok, why = stats.readiness([{"runner": "a", "error": "gone"}], ["a"])
    assert not ok and "unreadable" in why
