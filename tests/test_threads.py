"""A run computes with the thread count the harness chose, in torch's pool and in the BLAS
numpy links (stability_bench.threads): numpy's OpenBLAS workers spin after each call, so
with its default count two runs on two cores slowed each other by half."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from stability_bench.plan import plan_runs
from stability_bench.schema import load_case
from stability_bench.threads import thread_limits

DATA = Path(__file__).parent / "data" / "orchestrate"


def blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


@pytest.fixture
def two_threads_everywhere():
    """Both pools at two threads, whatever the machine or the session set, then restored."""
    if not blas_threads():
        pytest.skip("numpy links no BLAS that threadpoolctl can see")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    with threadpool_limits(limits=2, user_api="blas"):
        yield
    torch.set_num_threads(before)


def test_thread_limits_sets_torch_and_blas_and_restores_both(two_threads_everywhere):
    with thread_limits(1):
        assert torch.get_num_threads() == 1
        assert blas_threads() == {1}
    assert torch.get_num_threads() == 2
    assert blas_threads() == {2}


def test_a_run_trains_under_its_thread_count_in_both_pools(two_threads_everywhere, monkeypatch):
    import stability_bench.execute as execute

    seen = []
    monkeypatch.setattr(execute, "execute", lambda spec, progress=None: seen.append(
        (torch.get_num_threads(), blas_threads())))
    spec = plan_runs(load_case(DATA / "sweep.yaml"), devices=["cpu"], seeds=[0], optimizers=["adam"])[0]
    execute.run_one(spec)                 # auto: one thread for this small model
    execute.run_one(spec, threads=2)      # the user's count
    assert seen == [(1, {1}), (2, {2})]


def test_without_threadpoolctl_a_run_still_gets_its_torch_count(two_threads_everywhere, monkeypatch):
    """An uninstalled checkout on a machine without threadpoolctl (benchmarks/gpu_check.sh)."""
    import sys

    monkeypatch.setitem(sys.modules, "threadpoolctl", None)   # import raises ImportError
    with thread_limits(1):
        assert torch.get_num_threads() == 1
        assert blas_threads() == {2}
    assert torch.get_num_threads() == 2


def test_the_recorded_norms_do_not_depend_on_the_machines_blas_threads():
    """The recorder's norms are numpy dot products; OpenBLAS splits long ones over its
    threads, so under its default (one per core) a gradient norm differed in the last bits
    between a 1-core and a 2-core machine (measured: 1 in 1e14 at 33 k parameters)."""
    import numpy as np

    from stability_bench.execute import run_one

    spec = plan_runs(load_case(Path(__file__).parent / "data" / "threads" / "wide.yaml"), devices=["cpu"])[0]
    norms = []
    for machine in (1, 2):
        with threadpool_limits(limits=machine, user_api="blas"):
            history = run_one(spec).history
        norms.append(np.asarray([history["grad_norm"], history["update_norm"]]))
    assert norms[0].shape == (2, 20)
    np.testing.assert_array_equal(norms[0], norms[1])
