"""The PyTorch runnable's device follows the worker environment the strategy set."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")

from runnerlib import pytorch as rl_torch  # noqa: E402


@pytest.mark.parametrize(
    ("visible", "cuda", "device"),
    [
        ("-1", True, "cpu"),  # a CPU worker never takes a GPU, even where one exists
        ("0", True, "cuda"),  # a GPU worker uses the one it was given
        ("1", False, "cpu"),  # a GPU was named but CUDA is not usable here
        (None, False, "cpu"),
        (None, True, "cuda"),
    ],
)
def test_device_follows_cuda_visible_devices(monkeypatch, visible, cuda, device):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert rl_torch._device() == device
