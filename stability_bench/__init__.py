"""stability-bench: regression tests and benchmarks for optimizer stability in PyTorch.

Data flows one way: case (YAML or dict) → runs → results → metrics → expectations / reports.
"""
from __future__ import annotations

from stability_bench.registry import lazy_exports

__version__ = "0.1.0"

# Imported lazily so that `import stability_bench` stays cheap for the pytest plugin
# and the CLI, which only need the schema until they run something.
_EXPORTS = {
    "load_case": "stability_bench.schema",
    "Case": "stability_bench.types",
    "CaseError": "stability_bench.types",
    "run_case": "stability_bench.orchestrate",
    "make_plan": "stability_bench.plan",
    "run_plan": "stability_bench.orchestrate",
    "RunResult": "stability_bench.results",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
