"""Runnables for the deployment tests; importable by worker processes."""

from __future__ import annotations

import time

import numpy as np

import runnerlib


class Echo(runnerlib.Runnable):
    SUPPORTS_CPU_MULTI_THREADING = True

    @runnerlib.Runnable.method
    def echo(self, value):
        return value

    @runnerlib.Runnable.method
    def slow(self, value, seconds: float):
        time.sleep(seconds)
        return value

    @runnerlib.Runnable.method
    def nbytes(self, value) -> int:
        return int(getattr(value, "nbytes", len(value)))

    @runnerlib.Runnable.method
    def make(self, nbytes: int):
        return np.zeros(nbytes, dtype=np.uint8)


class Single(runnerlib.Runnable):
    """One call at a time per worker: ``cpu=2`` gives two workers."""

    SUPPORTS_CPU_MULTI_THREADING = False

    @runnerlib.Runnable.method
    def slow(self, value, seconds: float):
        time.sleep(seconds)
        return value
