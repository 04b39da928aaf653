"""Runnables for the reliability tests (soak, chaos, hostile, exhaustion); importable by the
worker processes, which get the test process's sys.path."""

from __future__ import annotations

import os
import time

import runnerlib


class Soak(runnerlib.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def add_one(self, x):
        """Batched: each caller must get back exactly its own rows, plus one."""
        return x + 1

    @runnerlib.Runnable.method
    def echo(self, value):
        return value

    @runnerlib.Runnable.method
    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

    @runnerlib.Runnable.method
    def pid(self):
        return os.getpid()


def soak_runner(name: str, **kw) -> runnerlib.Runner:
    kw.setdefault("cpu", 1)
    kw.setdefault("max_batch_size", 64)
    kw.setdefault("max_latency_ms", 10)
    kw.setdefault("timeout", 60)
    return runnerlib.Runner(Soak, name=name, **kw)
