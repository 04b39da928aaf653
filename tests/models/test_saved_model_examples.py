"""The examples/ scripts run as documented, and the HTTP service (uvicorn with several worker
processes in front of a ``python -m runnerlib serve`` server) answers concurrent requests."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _need(*modules: str) -> None:
    for m in modules:
        if importlib.util.find_spec(m) is None:
            pytest.skip(f"{m} is not installed (extras 'torch', 'sklearn', 'http')")


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["RUNNERLIB_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.mark.parametrize(
    ("script", "needs"),
    [
        ("custom_runnable.py", ()),
        ("pytorch_from_store.py", ("torch",)),
        ("reusable_runnable.py", ("torch",)),
        ("sequential_concurrent.py", ("torch", "sklearn")),
    ],
)
def test_example_script(script, needs, tmp_path):
    _need(*needs)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], cwd=EXAMPLES, env=_env(tmp_path / "home"),
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("ok")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_line(proc: subprocess.Popen, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            seen.append(line)
            if text in line:
                return line
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.05)
    raise AssertionError(f"{text!r} not printed: {''.join(seen)}")


def test_http_service_with_several_workers(tmp_path):
    _need("sklearn", "starlette", "uvicorn", "httpx")
    import httpx

    service = EXAMPLES / "http_service"
    env = _env(tmp_path / "home")
    subprocess.run([sys.executable, "train.py"], cwd=service, env=env, check=True,
                   capture_output=True, timeout=120)
    serve = subprocess.Popen(
        [sys.executable, "-m", "runnerlib", "serve", "runners:runners"], cwd=service, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    web = None
    try:
        _wait_line(serve, "serving iris_clf", 120)
        port = _free_port()
        web = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service:app", "--workers", "2",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            cwd=service, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        base = f"http://127.0.0.1:{port}"

        async def scenario() -> list[dict]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                deadline = time.monotonic() + 120
                while True:
                    assert web.poll() is None, web.stderr.read() if web.stderr else ""
                    try:
                        if (await client.get("/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, "service did not become ready"
                    await asyncio.sleep(0.2)
                bad = await client.post("/classify", json={"features": [[1, 2]]})
                assert bad.status_code == 400
                rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
                replies = await asyncio.gather(
                    *(client.post("/classify", json={"features": rows}) for _ in range(48))
                )
                assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
                return [r.json() for r in replies]

        answers = asyncio.run(scenario())
        assert all(a["classes"] == ["setosa", "virginica"] for a in answers)
        status = subprocess.run([sys.executable, "-m", "runnerlib", "status", "--json"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert "iris_clf" in status.stdout
    finally:
        if web is not None:
            _stop(web)
        _stop(serve)
    assert serve.returncode == 0
