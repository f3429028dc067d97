"""The cost model only orders the work queue, but a run it sizes far too small is queued
last and leaves a core idle while it finishes: its examples must be counted."""
from __future__ import annotations

from pathlib import Path

import torch

from stability_bench import costs
from stability_bench.components import BuildContext
from stability_bench.components.models import MODELS
from stability_bench.plan import plan_runs
from stability_bench.schema import load_case

DATA = Path(__file__).parent / "data" / "costs"


def test_a_full_batch_over_data_that_states_no_count_is_sized_by_its_examples_and_their_tokens():
    """modular_addition(7) is 49 sequences of 3 tokens; each token passes through the dense
    layers, so a full-batch step costs 6 × parameters × 147, not × 1."""
    case = load_case(DATA / "tokens.yaml")
    (spec,) = plan_runs(case, devices=["cpu"])
    ctx = BuildContext(seed=0, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    model = MODELS.get("decoder_transformer")(ctx, vocab=8, context=3, width=16, heads=2, layers=1)
    parameters = sum(p.numel() for p in model.parameters())
    assert costs._flop_per_step(spec) == 6.0 * parameters * 49 * 3
