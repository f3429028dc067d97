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


class BrokenModel(torch.nn.Module):
    """A model whose constructor raises (model_raises.yaml): the run cannot be set up."""

    def __init__(self, width: int):
        super().__init__()
        raise LookupError(f"no pretrained weights for width {width}")


class SignalsInAFinaliser(torch.optim.SGD):
    """SGD that, at step ``at``, sends its own process ``signum`` from inside a finaliser
    (``__del__`` run by the garbage collector), where Python discards the exception a
    signal handler raises: the signal must still stop the invocation."""

    def __init__(self, params, lr, at, signum):
        super().__init__(params, lr=lr)
        self.at, self.signum, self.count = at, signum, 0

    def step(self, closure=None):
        if self.count == self.at:
            import gc

            _Finaliser(self.signum)
            gc.collect()
        self.count += 1
        return super().step(closure)


class _Finaliser:
    def __init__(self, signum):
        self.signum, self.cycle = signum, self  # a reference cycle: only the collector frees it

    def __del__(self):
        import os

        os.kill(os.getpid(), self.signum)
        sum(range(1000))  # bytecode after the signal: the handler runs here, inside __del__
