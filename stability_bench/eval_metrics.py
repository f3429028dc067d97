"""Metrics of the periodic ``eval:`` loss (full training set or held-out split).

The eval loss is sparse in time: ``view.extra["evals"]`` holds ``step`` (the steps it was
taken at, before that step's update, plus ``steps`` — after the last update — for a run
that did not diverge) and ``eval_loss``. Each metric is ``None`` for a case without
``eval:``. Pure numpy, like :mod:`stability_bench.metrics`.
"""
from __future__ import annotations

import numpy as np

from stability_bench.metrics import METRICS, RunView

EVAL_METRICS = ("eval_final_loss", "eval_min_loss", "eval_min_loss_step")


def _finite_evals(view: RunView) -> tuple[np.ndarray, np.ndarray] | None:
    evals = view.extra.get("evals") or {}
    if len(evals.get("step", ())) == 0:
        return None
    steps, loss = np.asarray(evals["step"], dtype=float), np.asarray(evals["eval_loss"], dtype=float)
    keep = np.isfinite(loss)
    return steps[keep], loss[keep]


@METRICS.register("eval_final_loss")
def eval_final_loss(view: RunView) -> float | None:
    """The last finite eval loss (after the final update when the run did not diverge)."""
    found = _finite_evals(view)
    return float(found[1][-1]) if found is not None and found[1].size else None


@METRICS.register("eval_min_loss")
def eval_min_loss(view: RunView) -> float | None:
    """The smallest finite eval loss."""
    found = _finite_evals(view)
    return float(found[1].min()) if found is not None and found[1].size else None


@METRICS.register("eval_min_loss_step")
def eval_min_loss_step(view: RunView) -> int | None:
    """The step of the first smallest eval loss."""
    found = _finite_evals(view)
    return int(found[0][int(np.argmin(found[1]))]) if found is not None and found[1].size else None
