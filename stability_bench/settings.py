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
