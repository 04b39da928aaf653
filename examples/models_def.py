"""Model classes of the examples. A saved PyTorch module is pickled by reference to its class,
so the class lives in an importable module (not in a script's ``__main__``)."""

from __future__ import annotations

import torch
from torch import nn


class TinyClassifier(nn.Module):
    """A 2-layer classifier of 8 features into 3 classes."""

    def __init__(self, features: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class index per row."""
        return self.forward(x).argmax(dim=1)


def train_tiny_classifier(seed: int = 0, steps: int = 60) -> TinyClassifier:
    """Fit on synthetic data: the class is which of three feature groups has the largest sum."""
    torch.manual_seed(seed)
    x = torch.randn(512, 8)
    y = torch.stack([x[:, 0:3].sum(1), x[:, 3:6].sum(1), x[:, 6:8].sum(1)], dim=1).argmax(1)
    model = TinyClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return model.eval()
