"""PyTorch modules and Runnables for tests/compat, importable by worker processes.

``Custom`` subclasses the built-in Runnable of the saved model ``probe`` (as BentoML's
custom model runner example does), so this module needs that model in the store when it is
imported: ``import_custom()`` imports it after the test saved the model.
"""

from __future__ import annotations

import torch
from torch import nn


class Probe(nn.Module):
    """Tells what it was called with."""

    def forward(self, x):
        return x * 2

    def kind(self, x, **kwargs):
        return {"type": type(x).__name__, "dtype": str(x.dtype).replace("torch.", ""),
                "device": x.device.type, "kwargs": dict(sorted(kwargs.items()))}

    def scaled(self, x, factor=1.0):
        return x * factor

    def grad(self, x):
        return torch.is_grad_enabled()
