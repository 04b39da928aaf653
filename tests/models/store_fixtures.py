"""Objects and Runnables for tests/models; importable by worker processes (no torch here)."""

from __future__ import annotations

import os

import runnerlib


class Scaler:
    """A picklable 'model' with two methods."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def predict(self, x):
        return x * self.factor

    def describe(self, prefix: str) -> str:
        return f"{prefix}{self.factor}"

    def __call__(self, x):
        return x + self.factor


class ModelUser(runnerlib.Runnable):
    """A custom Runnable that loads a saved model in its worker (the seed's SpamDetection)."""

    def __init__(self, model) -> None:
        self.model = runnerlib.picklable_model.load_model(model)
        self.home = os.environ.get("RUNNERLIB_HOME")

    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def predict(self, x):
        return self.model.predict(x)

    @runnerlib.Runnable.method
    def where(self):
        return self.home


def save_in_loop(home: str, count: int, factor: float) -> list[str]:
    """Run in another process: save ``count`` versions of 'race'."""
    os.environ["RUNNERLIB_HOME"] = home
    from runnerlib import picklable_model

    return [str(picklable_model.save_model("race", Scaler(factor)).tag) for _ in range(count)]
