"""Stand-in for the MNIST download of BentoML's example: 28x28 greyscale "digits" made here.
Digit k is a bright 6x6 square at one of ten places on a noisy background, which a small
network learns in seconds."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset


def digit_images(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """float32 images in [0, 1], shape (n, 28, 28), one per label."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.3, size=(len(labels), 28, 28)).astype(np.float32)
    for i, k in enumerate(labels):
        row, col = 3 + (k // 5) * 14, 1 + (k % 5) * 5
        images[i, row:row + 6, col:col + 6] = 1.0
    return images


def dataset(n: int, seed: int) -> TensorDataset:
    """Like ``MNIST(..., transform=transforms.ToTensor())``: (1x28x28 tensor, label) pairs."""
    labels = np.random.default_rng(seed).integers(0, 10, size=n)
    images = torch.from_numpy(digit_images(labels, seed)).unsqueeze(1)
    return TensorDataset(images, torch.from_numpy(labels))
