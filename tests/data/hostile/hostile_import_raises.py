"""A user module that is found but fails while importing (a dependency it needs is missing)."""
import sb_hostile_missing_dependency  # noqa: F401

import torch


class Opt(torch.optim.SGD):
    pass
