"""Shared test configuration: pytester runs the plugin in a scratch folder."""
pytest_plugins = ["pytester"]


# ---- hypothesis profiles -------------------------------------------------------------------
# "ci": derandomized (the same examples on every run, no example database), no deadline
# (CI machines are shared and slow), the seed blob printed on failure for reproduction.
# "dev": random examples, kept in .hypothesis/ so a failure is replayed first next time.
# "thorough": for a manual deep run (HYPOTHESIS_PROFILE=thorough).
# Chosen by $HYPOTHESIS_PROFILE if set, else "ci" when $CI is set (CI services set CI=true),
# else "dev". Tests that pin max_examples themselves keep their own count.
import os as _os

import pytest
from hypothesis import settings as _settings

_settings.register_profile("ci", derandomize=True, deadline=None, max_examples=30, print_blob=True)
_settings.register_profile("dev", deadline=None, max_examples=30)
_settings.register_profile("thorough", deadline=None, max_examples=500)
_settings.load_profile(_os.environ.get("HYPOTHESIS_PROFILE")
                       or ("ci" if _os.environ.get("CI", "").lower() not in ("", "0", "false") else "dev"))


@pytest.fixture(autouse=True)
def _triage_in_tmp(tmp_path_factory, monkeypatch):
    """Failing runs inside unit tests write their triage bundles to a temporary folder,
    not ./triage (which CI uploads for real case failures)."""
    monkeypatch.setenv("STABILITY_BENCH_TRIAGE", str(tmp_path_factory.mktemp("triage")))


def pytest_configure(config):
    """Unit tests that call torch directly run on one intra-op thread, as the harness gives
    every shipped case (stability_bench.threads): with pytest-xdist's one worker per core,
    torch's default of one thread per core would oversubscribe a small machine. An explicit
    $OMP_NUM_THREADS is left alone."""
    if "OMP_NUM_THREADS" not in _os.environ:
        import torch

        torch.set_num_threads(1)
