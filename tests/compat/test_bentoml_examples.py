"""The BentoML examples ported by changing the import (examples/bentoml_port) run: each one's
train.py, then its demo.py (its service, its runner's workers in their own processes), as
subprocesses with a timeout."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PORTS = ROOT / "examples" / "bentoml_port"

EXAMPLES = [
    ("quickstart", [], ("sklearn", "starlette", "httpx"),
     ["Model saved: Model(tag=\"iris_clf:", "classify([[5.9, 3.0, 5.1, 1.8]]) -> [2]"]),
    ("pytorch_mnist", ["--epochs", "2", "--k-folds", "1"],
     ("torch", "sklearn", "starlette", "httpx", "PIL"),
     ["Saved model: Model(tag=\"pytorch_mnist:", "digit 9: predict_ndarray -> [9], "
      "predict_image -> [9]"]),
    ("custom_model_runner", ["--epochs", "1", "--log-interval", "100"],
     ("torch", "starlette", "httpx", "PIL", "prometheus_client"),
     ["Saved: Model(tag=\"mnist_cnn:", "Running on device: cpu", "24 concurrent requests"]),
]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


@pytest.mark.parametrize(("name", "train_args", "needs", "expected"), EXAMPLES,
                         ids=[e[0] for e in EXAMPLES])
def test_ported_example_runs(name, train_args, needs, expected, tmp_path):
    for module in needs:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (extras 'torch', 'sklearn', 'http')")
    example = PORTS / name
    env = dict(os.environ)
    env.update(RUNNERLIB_HOME=str(tmp_path / "home"), PYTHONDONTWRITEBYTECODE="1",
               MNIST_TRAIN_SIZE="1500")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = _run(["train.py", *train_args], example, env)
    out += _run(["demo.py"], example, env)
    for text in expected:
        assert text in out, out
    assert out.rstrip().splitlines()[-1].endswith("ok") or "\nok\n" in out, out


def test_ports_change_only_the_import():
    """Every file of the ports that imports BentoML's API does it as `runnerlib as bentoml`."""
    for path in PORTS.rglob("*.py"):
        text = path.read_text()
        assert "import bentoml\n" not in text.replace("# was: import bentoml\n", ""), path
        if "bentoml." in text:
            assert "import runnerlib as bentoml" in text, path
