"""A framework module of one's own, as BentoML's custom framework modules are written
(``load_model(model)``, ``get_runnable(model)``), and a picklable model class; importable by
worker processes."""

from __future__ import annotations

import numpy as np

import runnerlib as bentoml


def load_model(model):
    return np.load(model.path_of("weights.npy")) + model.custom_objects["offset"]


class NumpyRunnable(bentoml.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)

    def __init__(self):
        self.weights = load_model(bentoml.models.get("my_model:latest"))

    @bentoml.Runnable.method(batchable=True)
    def predict(self, x):
        return x + self.weights


def get_runnable(model):
    return NumpyRunnable


class Lookup:
    def __init__(self, table):
        self.table = table

    def __call__(self, key, default=None):
        return self.table.get(key, default)
