"""PyTorch modules for tests/models (saved whole, so importable by worker processes)."""

from __future__ import annotations

import os

import torch
from torch import nn


class Doubler(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1)

    def pair(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + 1, x.mean(dim=1)

    def probe(self, x: torch.Tensor) -> dict:
        return {
            "threads": torch.get_num_threads(),
            "omp": os.environ.get("OMP_NUM_THREADS"),
            "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "input_type": type(x).__name__,
            "input_device": x.device.type,
            "grad_enabled": torch.is_grad_enabled(),
            "pid": os.getpid(),
        }
