"""tests/run, the README's test command: valid bash, and inside a virtual environment it runs
pytest there (what CI does); outside one it installs, so that path is not run here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "run"


def test_run_script_is_valid_bash():
    assert os.access(SCRIPT, os.X_OK)
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_run_script_in_a_venv_runs_pytest_there():
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix,
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run([str(SCRIPT), "--collect-only", "-q", "tests/test_exports.py"],
                          capture_output=True, text=True, timeout=300, env=env, cwd="/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tests/test_exports.py: " in proc.stdout  # collected there, with -q -q
