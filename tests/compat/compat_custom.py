"""A Runnable that subclasses the built-in PyTorch Runnable of the saved model ``probe``,
written as BentoML's custom model runner example writes it. Imported only once ``probe`` is
in the store ($RUNNERLIB_HOME)."""

from __future__ import annotations

import numpy as np
import torch

import runnerlib as bentoml

probe_model = bentoml.pytorch.get("probe:latest")
_BuiltinRunnable = probe_model.to_runnable()


class CustomProbe(_BuiltinRunnable):
    def __init__(self):
        super().__init__()
        self.seen_in_init = type(super().__call__(np.ones((1, 2)))).__name__  # a warm-up call

    @bentoml.Runnable.method(batchable=True, batch_dim=0)
    def __call__(self, input_data):
        output = super().__call__(input_data)  # the built-in method: a tensor
        assert isinstance(output, torch.Tensor), type(output)
        return output.argmax(dim=1)

    @bentoml.Runnable.method
    def as_numpy(self, input_data):
        return super().__call__(input_data).numpy()

    @bentoml.Runnable.method
    def facts(self):
        return {"device_id": self.device_id, "model": type(self.model).__name__,
                "warm_up": self.seen_in_init, "input_of_kind": self.kind(np.zeros(1))}

    @bentoml.Runnable.method
    async def async_double(self, input_data):
        return super().__call__(input_data)
