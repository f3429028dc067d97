"""Reports people look at: figures, a self-contained HTML summary, triage bundles.

* :mod:`~stability_bench.reports.figures` — matplotlib figures (PNG and SVG) of a case's
  runs: loss and gradient norm per step with spikes and divergence marked, the curvature
  probes against their threshold, the scheduled learning rate, a zoom on the largest spikes
  over all seeds, a sweep summary, the critical-lr searches.
* :mod:`~stability_bench.reports.html` — one HTML page with the figures embedded, every
  failure listed at the top, and per case a run table (expectations, baseline findings,
  verdict) and a critical-lr table (``stability-bench report``).
* :mod:`~stability_bench.reports.screenshot` — the page in headless Chromium: a screenshot
  and the layout checks (``python -m stability_bench.reports.screenshot``).
* :mod:`~stability_bench.reports.triage` — the folder written when a run fails an
  expectation: the case as run, its result, figures and the optimizer state at the worst step.

matplotlib is an optional extra (``pip install stability-bench[report]``); it is imported
only when a figure is drawn, so everything else — triage bundles included — works without it.
"""
from __future__ import annotations

from stability_bench.registry import lazy_exports

INSTALL_HINT = "pip install stability-bench[report]"


class ReportDependencyError(ImportError):
    """matplotlib, needed to draw figures, is not installed."""


def require_matplotlib():
    """The ``matplotlib`` module, or :class:`ReportDependencyError` saying how to get it."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ReportDependencyError(
            f"stability-bench reports need matplotlib, which is not installed: {INSTALL_HINT} "
            f"(or pip install 'matplotlib>=3.7')") from exc
    return matplotlib


_EXPORTS = {
    "write_report": "stability_bench.reports.html",
    "render_html": "stability_bench.reports.html",
    "case_figures": "stability_bench.reports.figures",
    "FigureInfo": "stability_bench.reports.figures",
    "write_triage": "stability_bench.reports.triage",
    "worst_step": "stability_bench.reports.triage",
    "default_triage_root": "stability_bench.reports.triage",
    "read_results_file": "stability_bench.reports.collect",
    "report_data": "stability_bench.reports.collect",
    "ReportData": "stability_bench.reports.collect",
    "ReportRun": "stability_bench.reports.collect",
    "ReportSearch": "stability_bench.reports.collect",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = sorted([*_EXPORTS, "INSTALL_HINT", "ReportDependencyError", "require_matplotlib"])
