"""The package's exceptions survive pickling: a worker process (``--jobs``, Dask) that
raises one hands it to the parent by pickle, and an exception whose ``__init__`` takes
other arguments than its message broke the whole pool instead ("BrokenProcessPool:
CaseError.__init__() missing 1 required positional argument")."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from stability_bench.components.cifar10 import DataNotFoundError
from stability_bench.orchestrate import RunsFailed
from stability_bench.results import RunFailure
from stability_bench.registry import UnknownNameError
from stability_bench.schema import CaseError, load_case

DATA = Path(__file__).parent / "data" / "min_torch"


def _case_error() -> CaseError:
    with pytest.raises(CaseError) as info:
        load_case(DATA / "unquoted.yaml")
    return info.value


@pytest.mark.parametrize("make", [
    _case_error,
    lambda: UnknownNameError("model", "mpl", ["mlp", "quadratic"]),
    lambda: RunsFailed([RunFailure("c::adam-seed0-cpu", "crash", "ValueError: boom")], []),
    lambda: DataNotFoundError([Path("/nowhere/cifar-10-batches-py")], "offline", "download refused"),
], ids=["CaseError", "UnknownNameError", "RunsFailed", "DataNotFoundError"])
def test_an_exception_pickled_and_unpickled_says_the_same(make):
    error = make()
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error) and str(error)
