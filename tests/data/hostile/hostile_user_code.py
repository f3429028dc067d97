"""A user's package as hostile case files name it by import path (tests/data/hostile/*.yaml):
code that fails while it is being built. tests/hostile_cases.py puts this folder on sys.path."""
import torch


class RaisesInInit(torch.optim.SGD):
    """An optimizer whose constructor fails whatever its hyperparameters."""

    def __init__(self, params, lr):
        raise RuntimeError("this optimizer cannot be built")


class BrokenModel(torch.nn.Module):
    """A model whose constructor fails (at run start: validation does not build models)."""

    def __init__(self, width: int):
        super().__init__()
        raise RuntimeError(f"cannot build a model of width {width}")


def broken_data(n: int):
    """A data factory that fails."""
    raise AttributeError(f"'NoneType' object has no attribute 'samples' (n={n})")


NOT_CALLABLE = 3  # named as a model kind: not a factory
