import torch
from torch import nn


class TinyNet(nn.Module):
    """A user's model: a plain nn.Module, no build context."""

    def __init__(self, in_features: int = 3, width: int = 5):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, width), nn.Tanh(), nn.Linear(width, 1))

    def forward(self, x):
        return self.body(x)


def line_data(ctx, n: int = 24, in_features: int = 3):
    """A user's data factory taking the build context (its seeded generator)."""
    x = torch.randn(n, in_features, generator=ctx.generator, dtype=torch.float64).to(ctx.dtype)
    return x, x.sum(dim=1, keepdim=True)


def half_mse():
    return lambda pred, y: 0.5 * ((pred - y) ** 2).mean()


def weight_norm(ctx) -> dict:
    """A user's probe: the parameters' Euclidean norm."""
    return {"user_weight_norm": float(torch.sqrt(sum((p.detach() ** 2).sum() for p in ctx.session.params)))}
