"""A Runnable whose method is not a generator function but returns a generator (importable by
worker processes)."""

from __future__ import annotations

import runnerlib as bentoml


class Counter(bentoml.Runnable):
    @bentoml.Runnable.method
    def count(self, n):
        return (i * 10 for i in range(n))  # a generator, from a plain function
