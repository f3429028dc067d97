"""Sparse gradients (nn.Embedding/EmbeddingBag with sparse=True, what SparseAdam takes) in the
step recorder: it copies gradients into dense rows, and a sparse one has no dense copy_, so
it is densified — the run records exactly what the same model with dense gradients does."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stability_bench.plan import plan_runs
from stability_bench.runner import execute, start

CASE = Path(__file__).parent / "data" / "sparse" / "embedding_bag.yaml"


def test_the_model_gives_sparse_gradients():
    from stability_bench.schema import load_case

    session = start(plan_runs(load_case(CASE))[0])
    x, y = session.data.x[:4], session.data.y[:4]
    session.loss_fn(session.model(x), y).backward()
    assert session.params[0].grad.is_sparse


def test_sparse_gradients_are_recorded_like_dense_ones():
    from stability_bench.schema import load_case

    sparse = execute(plan_runs(load_case(CASE))[0])
    dense = execute(plan_runs(load_case(CASE, variant="dense"))[0])
    assert not sparse.diverged and sparse.history["loss"][-1] < sparse.history["loss"][0]
    for column in ("loss", "grad_norm", "update_norm"):
        np.testing.assert_allclose(sparse.history[column], dense.history[column], rtol=1e-12, atol=0,
                                   err_msg=column)
    assert torch.isfinite(torch.tensor(sparse.history["grad_norm"])).all()
