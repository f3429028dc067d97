"""Optimizers that fail, as a user's buggy optimizer would (tests/data/orchestrate/crashy.yaml)."""
import torch


class RaisesAtStep(torch.optim.SGD):
    """SGD that raises on its ``at``-th step (counting from 0)."""

    def __init__(self, params, lr, at):
        super().__init__(params, lr=lr)
        self.at, self.count = at, 0

    def step(self, closure=None):
        if self.count == self.at:
            raise FloatingPointError(f"user optimizer blew up at step {self.count}")
        self.count += 1
        return super().step(closure)


class RaisesInInit(torch.optim.SGD):
    def __init__(self, params, lr):
        raise RuntimeError("user optimizer cannot be built")
