"""Shared test configuration: pytester runs the plugin in a scratch folder."""
import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


# ---- pytester runs pytest in a subprocess -------------------------------------------------
# In-process, pytester removes from sys.modules every module a run imported once the run
# ends, but those modules leave state behind: ``matplotlib`` keeps attributes pointing at
# its dropped submodules (a later figure mixes two copies of gridspec) and torch keeps
# operator registrations (re-importing torch._inductor.test_operators then fails). Which
# modules a run imports depends on test order, so shuffled runs failed. A subprocess
# leaves this process untouched; PYTHONPATH makes it import this checkout's code. The
# subprocess is forked from a pre-warmed interpreter (tests/prewarmed.py): a new process
# all the same, without the ~3 s a fresh one spends importing torch before it starts.
def pytest_configure(config):
    if config.getoption("runpytest", None) == "inprocess":
        config.option.runpytest = "subprocess"
    _one_thread_per_worker()


def _one_thread_per_worker():
    """Unit tests that call torch or numpy's BLAS directly run on one thread of each, as the
    harness gives every shipped case (stability_bench.threads): with pytest-xdist's one
    worker per core, the default of one thread per core would oversubscribe a small machine.
    An explicit $OMP_NUM_THREADS is left alone."""
    if "OMP_NUM_THREADS" not in os.environ:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(1)
        threadpool_limits(limits=1, user_api="blas")


@pytest.fixture(scope="session")
def _prewarmed():
    """The pre-warmed interpreter pytester's subprocesses fork from (tests/prewarmed.py)."""
    from prewarmed import SERVER

    yield SERVER
    SERVER.close()


@pytest.fixture
def pytester(pytester, monkeypatch, _prewarmed):
    from prewarmed import prewarmed_popen

    root = str(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    monkeypatch.setattr(pytester, "popen", prewarmed_popen(_prewarmed, pytester.popen, pytester.CLOSE_STDIN))
    return pytester


# ---- hypothesis profiles -------------------------------------------------------------------
# "ci": derandomized (the same examples on every run, no example database), no deadline
# (CI machines are shared and slow), the seed blob printed on failure for reproduction.
# "dev": random examples, kept in .hypothesis/ so a failure is replayed first next time.
# "thorough": for a manual deep run (HYPOTHESIS_PROFILE=thorough).
# Chosen by $HYPOTHESIS_PROFILE if set, else "ci" when $CI is set (CI services set CI=true),
# else "dev". Tests that pin max_examples themselves keep their own count.
from hypothesis import settings as _settings

_settings.register_profile("ci", derandomize=True, deadline=None, max_examples=30, print_blob=True)
_settings.register_profile("dev", deadline=None, max_examples=30)
_settings.register_profile("thorough", deadline=None, max_examples=500)
_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE")
                       or ("ci" if os.environ.get("CI", "").lower() not in ("", "0", "false") else "dev"))


@pytest.fixture(autouse=True)
def _triage_in_tmp(tmp_path_factory, monkeypatch):
    """Failing runs inside unit tests write their triage bundles to a temporary folder,
    not ./triage (which CI uploads for real case failures)."""
    monkeypatch.setenv("STABILITY_BENCH_TRIAGE", str(tmp_path_factory.mktemp("triage")))



@pytest.fixture(autouse=True)
def _not_strict(monkeypatch):
    """CI sets STABILITY_BENCH_STRICT=1 for the shipped cases; the tests (and the pytest
    runs they start) check the default behaviour unless they set strict mode themselves."""
    monkeypatch.delenv("STABILITY_BENCH_STRICT", raising=False)


@pytest.fixture
def gpu_path(tmp_path):
    """A PATH whose ``nvidia-smi`` lists a GPU: the machine with a GPU that a CPU build of
    torch cannot use, for strict mode's check (no such machine here; the detection itself,
    PATH lookup and all, runs for real)."""
    folder = tmp_path / "gpu-bin"
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
    script.chmod(0o755)
    return os.pathsep.join([str(folder), os.environ.get("PATH", "")])
