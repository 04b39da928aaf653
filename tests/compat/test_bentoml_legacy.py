"""BentoML 1.2+ code spells the runner API ``bentoml.legacy.Runner`` /
``bentoml.legacy.Runnable``: it ports with ``runnerlib.legacy``. Workers get
``BENTOML_NUM_THREAD`` from the strategy, whatever this process's environment holds."""

from __future__ import annotations

import importlib

import pytest
from compat_env import EnvProbe

import runnerlib
import runnerlib as bentoml


def test_legacy_names():
    from runnerlib import legacy

    assert legacy is importlib.import_module("runnerlib.legacy") is bentoml.legacy
    assert legacy.Runner is runnerlib.Runner and legacy.Runnable is runnerlib.Runnable
    assert legacy.Strategy is runnerlib.Strategy
    assert set(legacy.__all__) == {"Runnable", "Runner", "Strategy"}


@pytest.mark.parametrize("name, hint", [("Service", "runnerlib.Server"),
                                        ("HTTPServer", "examples/http_service"),
                                        ("GrpcServer", "grpcio"),
                                        ("Resource", "custom runnerlib.Strategy")])
def test_legacy_names_runnerlib_lacks_say_what_to_write(name, hint):
    with pytest.raises(AttributeError, match=hint):
        getattr(bentoml.legacy, name)
    with pytest.raises(AttributeError):
        bentoml.legacy.NoSuchThing  # noqa: B018


def test_legacy_runner_runs_locally():
    runner = bentoml.legacy.Runner(EnvProbe, name="env_probe")
    runner.init_local(quiet=True)
    try:
        assert set(runner.environment.run()) >= {"BENTOML_NUM_THREAD"}
    finally:
        runner.destroy()


def test_worker_environment_from_the_strategy(monkeypatch):
    # left in this process's environment, they must not reach the worker: the strategy writes
    # them (as BentoML's does)
    monkeypatch.setenv("BENTOML_NUM_THREAD", "13")
    monkeypatch.setenv("OMP_NUM_THREADS", "13")
    runner = bentoml.legacy.Runner(EnvProbe, name="env_probe", cpu=1)
    expected = runner.scheduled_worker_env_map[0]
    assert expected["BENTOML_NUM_THREAD"] == "1" and expected["CUDA_VISIBLE_DEVICES"] == "-1"
    runner.init_client()
    try:
        env = runner.environment.run()
    finally:
        runner.destroy()
    assert env == {"BENTOML_NUM_THREAD": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "CUDA_VISIBLE_DEVICES": "-1"}
