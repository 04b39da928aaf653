"""Runners served by the CLI tests (``python -m runnerlib serve cli_app:...``)."""

from __future__ import annotations

import os

import numpy as np

import runnerlib


class CliDoubler(runnerlib.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def predict(self, x: np.ndarray) -> np.ndarray:
        return x * 2

    @runnerlib.Runnable.method
    def pid(self) -> int:
        return os.getpid()


ECHOES = runnerlib.metrics.Counter(  # bentoml.metrics, as BentoML's examples use it
    name="cli_app_echoes", documentation="values CliEcho echoed", labelnames=["kind"]
)


class CliEcho(runnerlib.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)

    @runnerlib.Runnable.method
    def echo(self, value):
        ECHOES.labels(kind=type(value).__name__).inc()
        return value


class CliBroken(runnerlib.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)

    def __init__(self) -> None:
        raise ValueError("no model file here")

    @runnerlib.Runnable.method
    def predict(self, x):
        return x


runner = runnerlib.Runner(CliDoubler, name="cli-doubler", cpu=1,
                          max_latency_ms=10)
echo = runnerlib.Runner(CliEcho, name="cli-echo", cpu=1)
broken = runnerlib.Runner(CliBroken, name="cli-broken", cpu=1)
runners = [runner, echo]
not_a_runner = 42


class CliSlow(runnerlib.Runnable):
    """Takes a while to build (a model being loaded), so that readiness can be seen late."""

    SUPPORTED_RESOURCES = ("cpu",)

    def __init__(self) -> None:
        import time

        time.sleep(float(os.environ.get("CLI_SLOW_SECONDS", "3")))

    @runnerlib.Runnable.method
    def ping(self) -> str:
        return "pong"


slow = runnerlib.Runner(CliSlow, name="cli-slow", cpu=1)
