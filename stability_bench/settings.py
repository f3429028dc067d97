"""The harness's yes/no environment variables, named and parsed in one place (torch-free,
importable from the lowest layers: the data components read the offline switch)."""
from __future__ import annotations

import os

STRICT_ENV = "STABILITY_BENCH_STRICT"   # 1: a shipped case that cannot run here is a failure
OFFLINE_ENV = "STABILITY_BENCH_OFFLINE"  # 1: data is never downloaded on first use


def env_flag(name: str) -> bool:
    """A yes/no environment variable: 1/true/yes/on or 0/false/no/off/unset; anything else
    is a ValueError naming the variable (a typo must not silently mean "no")."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name}={os.environ[name]!r}: expected 1 or 0")


def strict_mode(flag: bool = False) -> bool:
    """``--strict`` / ``--stability-strict``, or ``$STABILITY_BENCH_STRICT=1``: a case that
    cannot run here (its data missing; CUDA items skipped on a machine that has a GPU) is a
    failure, not a skip. A malformed variable is a ValueError naming it — this one, or
    ``$STABILITY_BENCH_OFFLINE`` (checked here too, so that a typo is one usage error
    before anything runs rather than an error in the middle of preparing the data)."""
    env_flag(OFFLINE_ENV)
    return flag or env_flag(STRICT_ENV)
