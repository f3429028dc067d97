"""A baseline knows the examples it was recorded on (``TensorData.digest``): the same case
run on another copy of its data — the official CIFAR-10 release where the baseline used the
subset file — is *stale*, never a regression, even though the case file did not change."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from stability_bench.baseline import check_against_baseline, record_baseline
from stability_bench.components.data import TensorData
from stability_bench.plan import plan_runs
from stability_bench.runner import execute
from stability_bench.schema import load_case

DATA = Path(__file__).parent / "data" / "data_digest"


def _write_points(folder: Path, shift: float) -> None:
    x = np.random.default_rng(0).standard_normal((16, 3))
    np.savez(folder / "points.npz", x=x + shift, y=np.tanh(x.sum(axis=1, keepdims=True)))


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(DATA))
    monkeypatch.chdir(tmp_path)   # the case names points.npz relative to where it runs
    _write_points(tmp_path, 0.0)
    case = load_case(DATA / "file_points.yaml")
    (spec,) = plan_runs(case, devices=["cpu"])
    original = execute(spec)
    nudged = [execute(dataclasses.replace(spec, perturb=n)) for n in (1, -1)]
    return case, spec, original, record_baseline(case, [original], nudged)


def test_the_same_data_is_compared_and_holds(recorded):
    case, spec, original, baseline = recorded
    assert baseline["runs"]["file_points::adam-cpu"]["data"] == {"0": original.meta["data"]}
    found = check_against_baseline(case, execute(spec), baseline)
    assert {f.status for f in found} <= {"inside", "uninformative"}, [f.message for f in found]
    assert {"final_loss", "early_trajectory"} <= {f.figure for f in found if f.status == "inside"}


def test_another_copy_of_the_data_is_stale_not_a_regression(recorded, tmp_path):
    case, spec, original, baseline = recorded
    _write_points(tmp_path, 1e-3)   # the same points, written by another tool: slightly other values
    (finding,) = check_against_baseline(case, execute(spec), baseline)
    assert finding.status == "stale" and finding.changed == ["data"] and not finding.failed
    assert "recorded on other data" in finding.message and original.meta["data"] in finding.message


def test_the_digest_sees_values_dtype_and_shape_not_the_device_or_the_copy():
    x, y = torch.arange(6.0).reshape(3, 2), torch.zeros(3, 1)
    base = TensorData(x, y).digest()
    assert TensorData(x.clone(), y.clone()).digest() == base
    assert TensorData(x.reshape(2, 3), y).digest() != base
    assert TensorData(x.double(), y).digest() != base
    assert TensorData(x + torch.tensor(1e-6), y).digest() != base
