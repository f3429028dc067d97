"""One self-contained HTML page: every case's figures (PNG, embedded as ``data:`` URIs) and
a summary table per case — metrics, expectations, pass/fail — with the environment (torch
version, devices, dtypes, commit). Nothing is loaded from elsewhere: no scripts, styles,
fonts or images outside the file.

:func:`write_report` writes into ``out_dir``: ``index.html``, the figures as PNG and SVG
files (``<case>.<kind>.png|svg``) and ``manifest.json`` (each figure's kind, case, panel
count and files).
"""
from __future__ import annotations

import base64
import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from stability_bench.reports.collect import (ReportRun, by_case, environment_with_commit, safe_name,
                                             series_of, short_class)
from stability_bench.reports.figures import FORMATS, FigureInfo, case_figures
from stability_bench.results import write_json_atomic

METRIC_COLUMNS = ("final_loss", "min_loss", "min_loss_step", "late_instability", "spike_count",
                  "spike_frequency", "spike_period")


@dataclass
class Report:
    html: Path
    manifest: Path
    figures: list[FigureInfo] = field(default_factory=list)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def _params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_num(v) if isinstance(v, float) else v}" for k, v in params.items())


def _outcome(o: Mapping[str, Any]) -> str:
    bound = o.get("bound")
    resolved = o.get("resolved_bound")
    shown = _num(bound) if bound == resolved else f"{bound} = {_num(resolved)}"
    mark = '<span class="ok">✓</span>' if o.get("passed") else '<span class="bad">✗ FAILED</span>'
    measured = o.get("detail") or f"measured {_num(o.get('value'))}"  # parity outcomes say more
    return (f'<div title="{_e(o.get("where", ""))}">{_e(o.get("metric"))} {_e(o.get("comparator"))} '
            f"{_e(shown)}: {_e(measured)} {mark}</div>")


def _verdict(run: ReportRun) -> str:
    if run.passed is None:
        return '<span class="none">no expectations</span>'
    return '<span class="ok">pass</span>' if run.passed else '<span class="bad">FAIL</span>'


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _case_table(runs: list[ReportRun]) -> str:
    label = {id(run): s.label for s in series_of(runs) for run in s.runs}
    head = ("<tr><th>run</th><th>optimizer</th><th>hyperparameters</th><th>seed</th><th>device</th>"
            "<th>dtype</th><th>steps</th><th>status</th>"
            + "".join(f"<th>{_e(m.replace('_', ' '))}</th>" for m in METRIC_COLUMNS)
            + "<th>expectations</th><th>verdict</th></tr>")
    rows = []
    for run in runs:
        r = run.result
        status = (f'<span class="bad">diverged at step {r.divergence_step}</span>' if r.diverged
                  else f"finished ({len(r.history.get('loss', []))} steps)")
        expectations = "".join(_outcome(o) for o in run.outcomes) or "—"
        rows.append(
            f'<tr class="{"fail" if run.passed is False else ""}"><td>{_e(label[id(run)])}</td>'
            f"<td>{_e(short_class(r.optimizer_class))}</td><td>{_e(_params(r.params))}</td>"
            f"<td>{r.seed}</td><td>{_e(r.device)}</td><td>{_e(r.dtype)}</td><td>{r.steps}</td><td>{status}</td>"
            + "".join(f"<td>{_e(_num(r.metrics.get(m)))}</td>" for m in METRIC_COLUMNS)
            + f"<td>{expectations}</td><td>{_verdict(run)}</td></tr>")
    return f'<table class="runs">{head}{"".join(rows)}</table>'


def _environment(env: Mapping[str, Any], runs: Sequence[ReportRun]) -> str:
    rows = [("torch", env.get("torch")), ("devices", ", ".join(sorted({r.result.device for r in runs}))),
            ("dtypes", ", ".join(sorted({r.result.dtype for r in runs}))), ("commit", env.get("commit")),
            ("python", env.get("python")), ("platform", env.get("platform")),
            ("CUDA", f"{env.get('cuda')} (available: {env.get('cuda_available')})" if "cuda" in env else None)]
    return '<table class="env">' + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
                                           for k, v in rows if v is not None) + "</table>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:0.8em;margin:0.6em 0}
th,td{border:1px solid #ddd;padding:3px 6px;vertical-align:top;text-align:left}
th{background:#f4f4f4}tr.fail td{background:#fff3f3}
.ok{color:#17702b;font-weight:600}.bad{color:#b00020;font-weight:600}.none{color:#777}
img{max-width:100%;border:1px solid #eee;margin:0.4em 0;display:block}
.desc{color:#444;max-width:60em}.small{color:#666;font-size:0.85em}
"""


def render_html(runs: Sequence[ReportRun], figures: Sequence[FigureInfo], environment: Mapping[str, Any],
                title: str = "stability-bench report") -> str:
    """The page, with each PNG figure read from disk and embedded."""
    cases = by_case(runs)
    figures_of: dict[str, list[FigureInfo]] = {}
    for info in figures:
        figures_of.setdefault(info.case, []).append(info)
    failed = sum(run.passed is False for run in runs)
    passed = sum(run.passed is True for run in runs)
    toc = "".join(
        f'<li><a href="#{_e(safe_name(name))}">{_e(name)}</a> — '
        f"{'<span class=bad>FAIL</span>' if any(r.passed is False for r in rs) else '<span class=ok>pass</span>'}"
        f" ({len(rs)} run{'s' if len(rs) != 1 else ''})</li>" for name, rs in cases.items())
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>",
             f"<p>{len(cases)} case(s), {len(runs)} run(s): <span class='ok'>{passed} passed</span>, "
             f"<span class='bad'>{failed} failed</span>, {len(runs) - passed - failed} without expectations. "
             f"<span class='small'>Generated {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</span></p>",
             "<h2>Environment</h2>", _environment(environment, runs), f"<ul>{toc}</ul>"]
    for name, rs in cases.items():
        parts.append(f'<h2 id="{_e(safe_name(name))}">{_e(name)}</h2>')
        description = next((r.description for r in rs if r.description), "")
        if description:
            parts.append(f'<p class="desc">{_e(description)}</p>')
        parts.append(_case_table(rs))
        for info in figures_of.get(name, []):
            png = next((f for f in info.files if f.suffix == ".png"), None)
            if png is not None and png.exists():
                parts.append(f"<p class='small'>{_e(info.kind)}: {_e(info.title)} ({info.panels} panel{'s' if info.panels != 1 else ''}; "
                             f"files {_e(', '.join(f.name for f in info.files))})</p>")
                parts.append(_image(png, f"{name} {info.kind}"))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(runs: Sequence[ReportRun], out_dir: str | Path, environment: Mapping[str, Any] | None = None,
                 formats: Sequence[str] = FORMATS, title: str = "stability-bench report") -> Report:
    """Figures for every case of ``runs`` and ``index.html`` + ``manifest.json`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    formats = tuple(dict.fromkeys(("png", *formats)))  # the page embeds the PNGs
    env = environment_with_commit(environment)
    figures: list[FigureInfo] = []
    for name, rs in by_case(runs).items():
        figures += case_figures(rs, out, stem=safe_name(name), formats=formats)
    page = out / "index.html"
    page.write_text(render_html(runs, figures, env, title), encoding="utf-8")
    manifest = out / "manifest.json"
    write_json_atomic(manifest, {
        "environment": env, "html": page.name,
        "figures": [{"kind": f.kind, "case": f.case, "title": f.title, "panels": f.panels,
                     "run_id": f.run_id, "files": [p.name for p in f.files]} for f in figures],
        "runs": [{"run_id": r.result.run_id, "case": r.result.case, "passed": r.passed} for r in runs]})
    return Report(page, manifest, figures)


def report_from_files(paths: Sequence[str | Path], out_dir: str | Path,
                      formats: Sequence[str] = FORMATS) -> Report:
    """``stability-bench report``: read results files, write the report."""
    from stability_bench.reports.collect import read_results_file

    env: dict = {}
    runs: list[ReportRun] = []
    for path in paths:
        file_env, file_runs = read_results_file(path)
        env = env or file_env
        runs += file_runs
    if not runs:
        raise ValueError(f"no runs in {', '.join(map(str, paths))}")
    return write_report(runs, out_dir, env, formats)

