"""A user's data factory that reads its examples from a file (tests/test_data_digest.py):
the case names the file; what the file holds decides the run."""
import numpy as np
import torch


def points(ctx, path: str):
    arrays = np.load(path)
    return torch.as_tensor(arrays["x"]).to(ctx.dtype), torch.as_tensor(arrays["y"]).to(ctx.dtype)
