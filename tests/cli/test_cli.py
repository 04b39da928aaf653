"""``python -m runnerlib serve|status|cleanup`` as real subprocesses (SPEC 8, 10).

Each test starts ``serve`` in its own process (cwd = this folder, so ``cli_app`` imports in
the server and its workers), waits until the registry lists the runner, talks to it from this
process with ``init_client(spawn=False)``, and reads it back with ``status``. The serve
process's workers are not children of this process, so each test checks itself that they are
gone once the server stopped; the suite's conftest checks the segments.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cli_app
import numpy as np
import pytest

from runnerlib import registry

HERE = Path(__file__).resolve().parent
START_DEADLINE = 180.0  # seconds: worker start on a loaded 2-core machine
STOP_DEADLINE = 60.0


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runnerlib", *args], cwd=HERE,
                          env=env or _env(), capture_output=True, text=True, timeout=timeout)


def status_json() -> list[dict]:
    out = cli("status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def snap_of(name: str) -> dict:
    found = [s for s in status_json() if s["runner"] == name]
    assert len(found) == 1, found
    return found[0]


def wait_for(cond, what: str, deadline: float = 60.0):
    end = time.monotonic() + deadline
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


class Served:
    """A ``python -m runnerlib serve`` process."""

    def __init__(self, proc: subprocess.Popen[str], log: Path, names: list[str]) -> None:
        self.proc = proc
        self.log = log
        self.names = names
        self.worker_pids: set[int] = set()

    def output(self) -> str:
        return self.log.read_text()

    def remember_workers(self) -> None:
        for s in status_json():
            if s["runner"] in self.names:
                self.worker_pids |= {w["pid"] for w in s["workers"] if w["pid"] > 0}

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.remember_workers()
        self.proc.send_signal(sig)
        code = self.proc.wait(STOP_DEADLINE)
        self.assert_gone()
        return code

    def assert_gone(self) -> None:
        pid = self.proc.pid
        for name in self.names:
            assert registry.find(name) is None, f"registry record of {name} left behind"
            assert not (registry.namespace_dir() / f"{name}.json").exists()
        wait_for(lambda: not any(registry.pid_alive(p) for p in self.worker_pids),
                 f"workers {sorted(self.worker_pids)} to exit", 20)
        prefixes = tuple(f"rl.{p}." for p in {pid, *self.worker_pids})
        wait_for(lambda: not [n for n in os.listdir("/dev/shm") if n.startswith(prefixes)],
                 "the server's segments to be unlinked", 20)


@contextlib.contextmanager
def serve(tmp_path: Path, target: str, names: list[str], *extra: str,
          env: dict[str, str] | None = None) -> Iterator[Served]:
    log = tmp_path / f"serve-{len(list(tmp_path.glob('serve-*')))}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runnerlib", "-v", "serve", target, *extra],
            cwd=HERE, env=env or _env(), stdout=f, stderr=subprocess.STDOUT, text=True,
        )
    served = Served(proc, log, names)
    try:
        end = time.monotonic() + START_DEADLINE
        while not all(registry.find(n) for n in names):
            if proc.poll() is not None:
                pytest.fail(f"serve exited with {proc.returncode}:\n{served.output()}")
            assert time.monotonic() < end, f"serve did not come up:\n{served.output()}"
            time.sleep(0.1)
        served.remember_workers()
        yield served
    finally:
        if proc.poll() is None:
            served.remember_workers()
            proc.terminate()
            try:
                proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for p in served.worker_pids:  # never leave a worker behind, even on failure
            if registry.pid_alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)


@pytest.fixture
def client_of():
    used = []

    def attach(runner):
        runner.init_client(spawn=False)
        used.append(runner)
        return runner

    yield attach
    for r in used:
        r.destroy()


def test_serve_call_status_restart_and_sigterm(tmp_path, client_of):
    with serve(tmp_path, "cli_app:runner", ["cli-doubler"]) as served:
        runner = client_of(cli_app.runner)
        worker_pid = runner.pid.run()
        calls = 0
        for i in range(1, 9):
            x = np.full((i, 3), float(i), dtype=np.float32)
            np.testing.assert_array_equal(runner.predict.run(x), x * 2)
            calls += 1
        # concurrent calls, so that some may share a batch
        errors: list[BaseException] = []

        def call(k: int) -> None:
            try:
                y = runner.predict.run(np.full((2, 3), float(k), dtype=np.float32))
                assert float(y[0, 0]) == 2.0 * k
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        calls += 1 + 8  # and the pid call

        snap = snap_of("cli-doubler")
        assert snap["state"] == "ready"
        assert snap["server_pid"] == served.proc.pid
        assert snap["runnable"] == "cli_app:CliDoubler"
        assert snap["requests"] == calls
        assert snap["errors"] == 0
        assert snap["queue_depth"] == 0
        assert snap["clients"] >= 1
        assert 1 <= snap["batches"] <= calls
        assert snap["mean_batch_size"] >= 1.0
        assert snap["rows"] >= sum(range(1, 9)) + 16
        lat = snap["latency_us"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert sum(snap["latency_hist"]) == calls
        [w] = snap["workers"]
        assert w["pid"] == worker_pid and w["state"] == "ready"
        assert w["cpus"] and set(w["cpus"]) <= os.sched_getaffinity(0)
        assert w["gpu"] is None and w["restarts"] == 0 and w["in_flight"] == 0

        text = cli("status")
        assert text.returncode == 0, text.stderr
        out = text.stdout
        assert "runner cli-doubler" in out and f"server pid {served.proc.pid}" in out
        assert re.search(rf"requests\s+{calls}\b", out), out
        assert re.search(r"queue depth 0\b", out), out
        assert re.search(r"batches\s+\d+\s+mean batch size \d+\.\d\d", out), out
        assert re.search(r"latency\s+p50 < \d+(\.\d+)? [mu]?s\s+p90 < .*p99 < ", out), out
        assert re.search(r"restarts\s+0\b", out), out
        assert re.search(rf"^\s+0\s+{worker_pid}\s+ready\s+[-,0-9]+\s+-\s+", out, re.M), out

        # one logger per runner: the server logs as runnerlib.runner.<name>
        assert "runnerlib.runner.cli-doubler INFO serving with 1 worker(s)" in served.output()

        # SIGKILL the worker: the server restarts it and status counts the restart
        os.kill(worker_pid, signal.SIGKILL)

        def restarted():
            s = snap_of("cli-doubler")
            w = s["workers"][0]
            return w["restarts"] >= 1 and w["state"] == "ready" and w["pid"] != worker_pid

        wait_for(restarted, "the worker to be restarted", START_DEADLINE)
        served.remember_workers()
        x = np.ones((2, 3), dtype=np.float32)
        np.testing.assert_array_equal(runner.predict.run(x), x * 2)
        assert runner.pid.run() != worker_pid
        snap = snap_of("cli-doubler")
        assert snap["workers"][0]["restarts"] >= 1
        assert re.search(r"restarts\s+[1-9]", cli("status").stdout)
        assert re.search(r"runnerlib\.runner\.cli-doubler WARNING worker 0 \(pid "
                         rf"{worker_pid}\) died", served.output()), served.output()

        if _has_prometheus():
            prom = cli("status", "--prometheus")
            assert prom.returncode == 0, prom.stderr
            labels = f'namespace="{registry.namespace()}",runner="cli-doubler"'
            text = prom.stdout
            assert f"runnerlib_requests_total{{{labels}}} {float(snap['requests'])}" in text
            assert f"runnerlib_batches_total{{{labels}}} {float(snap['batches'])}" in text
            assert f"runnerlib_queue_depth{{{labels}}} 0.0" in text
            assert re.search(rf'runnerlib_worker_restarts_total{{{labels},worker="0"}} '
                             r"[1-9]", text), text
            assert f'runnerlib_latency_seconds_bucket{{le="+Inf",{labels}}}' in text
            ns = f'namespace="{registry.namespace()}"'
            assert (f'runnerlib_latency_quantile_seconds{{{ns},quantile="0.99",'
                    'runner="cli-doubler"}') in text
            assert "# TYPE runnerlib_latency_seconds histogram" in text

        runner.destroy()
        assert served.stop(signal.SIGTERM) == 0
        assert "runnerlib: stopped on SIGTERM" in served.output()
    assert "Traceback" not in served.output()


def _has_prometheus() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def test_prometheus_without_the_package_is_a_clear_error():
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "from runnerlib.cli import main\n"
            "sys.exit(main(['status', '--prometheus']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=_env())
    assert out.returncode == 2
    assert "needs prometheus-client: pip install prometheus-client" in out.stderr
    assert "Traceback" not in out.stderr


def test_config_file_and_a_list_of_runners(tmp_path, client_of):
    config = tmp_path / "runners.yaml"
    config.write_text(
        "runners:\n"
        "  - name: cli-doubler\n"
        "    max_batch_size: 4\n"
        "  - name: cli-echo\n"
        "    cpu: 1\n"
        "    workers_per_resource: 2\n"
    )
    names = ["cli-doubler", "cli-echo"]
    with serve(tmp_path, "cli_app:runners", names, "--config", str(config)) as served:
        doubler = client_of(cli_app.runner)
        echo = client_of(cli_app.echo)
        # max_batch_size 4 from the file: a 10-row call runs as 3 batches (4 + 4 + 2 rows)
        x = np.arange(30, dtype=np.float32).reshape(10, 3)
        np.testing.assert_array_equal(doubler.predict.run(x), x * 2)
        assert echo.run({"a": [1, 2]}) == {"a": [1, 2]}
        snaps = {s["runner"]: s for s in status_json()}
        assert set(names) <= set(snaps)
        d = snaps["cli-doubler"]
        assert d["requests"] == 1 and d["batches"] == 3 and d["rows"] == 10
        assert d["mean_batch_size"] == pytest.approx(10 / 3)
        assert max(int(k[1:]) for k in d["batch_size_hist"]) <= 8  # no batch over 4 rows
        e = snaps["cli-echo"]
        assert len(e["workers"]) == 2
        assert all(w["state"] == "ready" and w["pid"] > 0 for w in e["workers"])
        assert len({w["pid"] for w in e["workers"]}) == 2
        assert e["requests"] == 1
        text = cli("status").stdout
        assert "runner cli-doubler" in text and "runner cli-echo" in text
        doubler.destroy()
        echo.destroy()
        assert served.stop(signal.SIGTERM) == 0


def test_ctrl_c_stops_cleanly(tmp_path, client_of):
    with serve(tmp_path, "cli_app:echo", ["cli-echo"]) as served:
        echo = client_of(cli_app.echo)
        assert echo.run("hi") == "hi"
        echo.destroy()
        assert served.stop(signal.SIGINT) == 0
        assert "runnerlib: stopped on SIGINT" in served.output()
        assert "Traceback" not in served.output()


def test_a_second_server_for_the_same_runner_is_refused(tmp_path):
    with serve(tmp_path, "cli_app:echo", ["cli-echo"]) as served:
        out = cli("serve", "cli_app:echo")
        assert out.returncode == 1
        assert "already served by pid" in out.stderr and "Traceback" not in out.stderr
        assert registry.find("cli-echo").server_pid == served.proc.pid
        assert served.stop() == 0


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nomodule:x", "cannot import module 'nomodule'"),
        ("cli_app:not_a_runner", "must be a runnerlib.Runner or a list of them, found int"),
        ("cli_app:missing", "module 'cli_app' has no attribute 'missing'"),
        ("cli_app", "expected MODULE:ATTR"),
    ],
)
def test_bad_target_is_a_clear_error(target, message):
    out = cli("serve", target)
    assert out.returncode == 2
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert registry.find("cli-doubler") is None


def test_a_runnable_that_cannot_start_is_a_clear_error():
    out = cli("serve", "cli_app:broken")
    assert out.returncode == 1
    assert "ValueError" in out.stderr and "no model file here" in out.stderr, out.stderr
    assert registry.find("cli-broken") is None


def test_bad_config_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runners:\n  - name: cli-echo\n    max_batch_size: lots\n")
    out = cli("serve", "cli_app:echo", "--config", str(bad))
    assert out.returncode == 2
    assert "max_batch_size" in out.stderr and "Traceback" not in out.stderr
    out = cli("serve", "cli_app:echo", "--config", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "does not exist" in out.stderr
    assert registry.find("cli-echo") is None


def test_status_with_nothing_running(tmp_path):
    env = _env(RUNNERLIB_RUNTIME_DIR=str(tmp_path / "empty"))
    out = cli("status", env=env)
    assert out.returncode == 0
    assert out.stdout.strip() == "no runnerlib server is running for this user"
    out = cli("status", "--json", env=env)
    assert out.returncode == 0 and json.loads(out.stdout) == []


def test_cleanup_with_nothing_stale():
    first = cli("cleanup")  # whatever other dead processes of this user left
    assert first.returncode == 0, first.stderr
    out = cli("cleanup")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0 stale segment(s) removed"
