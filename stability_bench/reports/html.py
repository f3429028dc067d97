"""One self-contained HTML page: every case's figures (PNG, embedded as ``data:`` URIs) and
a summary table per case — metrics, expectations, baseline findings (band and value),
verdict — the critical lr of each search with its edge interval, every failure listed at
the top and linked to its row, and the environment and the case files' commits as the
results recorded them when the runs ran. Nothing is loaded from elsewhere: no scripts,
styles, fonts or images outside the file.

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

from stability_bench.reports.collect import (FAILED_FINDINGS, ReportData, ReportRun, ReportSearch, by_case,
                                             safe_name, series_of, short_class)
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


def _band(f: Mapping[str, Any]) -> str:
    """A baseline finding's allowed range: its band, else the recorded value (equality)."""
    band = f.get("band")
    if isinstance(band, (list, tuple)) and len(band) == 2:
        return f"band [{_num(band[0])}, {_num(band[1])}]"
    return f"baseline {_num(f.get('baseline'))}"


def _finding(f: Mapping[str, Any]) -> str:
    status = f.get("status")
    if status == "stale":
        changed = ", ".join(map(str, f.get("changed") or [])) or "the case"
        rerecord = str(f.get("message", "")).partition("re-record: ")[2]
        return (f'<div class="stale" title="{_e(f.get("message", ""))}">baseline stale ({_e(changed)} changed '
                f"since it was recorded): not compared" + (f"; re-record: <code>{_e(rerecord)}</code>" if rerecord else "")
                + "</div>")
    mark = {"inside": '<span class="ok">✓</span>', "outside": '<span class="bad">✗ OUTSIDE</span>',
            "missing": '<span class="bad">✗ NO BASELINE</span>'}.get(status, f'<span class="none">{_e(status)}</span>')
    moved = f" ({_e(f['direction'])})" if f.get("direction") else ""
    return (f'<div title="{_e(f.get("message", ""))}">{_e(f.get("figure"))} = {_e(_num(f.get("value")))}, '
            f"{_e(_band(f))}{moved} {mark}</div>")


def _findings(findings: Sequence[Mapping[str, Any]]) -> str:
    """Failed and stale findings in full; the ones that held (or were not compared) folded."""
    if not findings:
        return "—"
    loud = [f for f in findings if f.get("status") in ("outside", "missing", "stale")]
    quiet = [f for f in findings if f not in loud]
    inside = sum(f.get("status") == "inside" for f in quiet)
    folded = (f"<details><summary>{inside} inside band" + (f", {len(quiet) - inside} not compared"
                                                           if len(quiet) > inside else "")
              + f"</summary>{''.join(_finding(f) for f in quiet)}</details>") if quiet else ""
    return "".join(_finding(f) for f in loud) + folded


VERDICTS = {"passed": '<span class="ok">pass</span>', "failed": '<span class="bad">FAIL</span>',
            "stale": '<span class="stale">stale baseline</span>', None: '<span class="none">nothing checked</span>'}


def _verdict(verdict: str | None) -> str:
    return VERDICTS[verdict]


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


class Anchors:
    """One unique HTML id per run, search or failure (``run-<run id>``), so the failures
    listed at the top of the page link to their rows."""

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}

    def __call__(self, key: str) -> str:
        if key not in self._ids:
            base = "run-" + safe_name(key, limit=400)
            anchor, n = base, 1
            while anchor in self._ids.values():
                n += 1
                anchor = f"{base}-{n}"
            self._ids[key] = anchor
        return self._ids[key]


# Column widths of the run table: with table-layout fixed and wrapping anywhere it is
# exactly as wide as the page (a 1280-px window), however long a run id or a message.
RUN_COLUMNS = (("run", 10), ("optimizer", 5), ("hyperparameters", 8), ("seed", 2.5), ("device", 3.5),
               ("dtype", 4.5), ("steps", 3.5), ("status", 5.5), *((m.replace("_", " "), 4.5) for m in METRIC_COLUMNS),
               ("expectations", 11), ("baseline", 11), ("verdict", 4))


def _case_table(runs: list[ReportRun], anchor: Anchors) -> str:
    label = {id(run): s.label for s in series_of(runs) for run in s.runs}
    cols = "".join(f'<col style="width:{w}%">' for _, w in RUN_COLUMNS)
    head = "<tr>" + "".join(f"<th>{_e(name)}</th>" for name, _ in RUN_COLUMNS) + "</tr>"
    rows = []
    for run in runs:
        r = run.result
        status = (f'<span class="bad">diverged at step {r.divergence_step}</span>' if r.diverged
                  else f"finished ({len(r.history.get('loss', []))} steps)")
        expectations = "".join(_outcome(o) for o in run.outcomes) or "—"
        rows.append(
            f'<tr id="{anchor(r.run_id)}" class="{run.verdict or ""}"><td>{_e(label[id(run)])}</td>'
            f"<td>{_e(short_class(r.optimizer_class))}</td><td>{_e(_params(r.params))}</td>"
            f"<td>{r.seed}</td><td>{_e(r.device)}</td><td>{_e(r.dtype)}</td><td>{r.steps}</td><td>{status}</td>"
            + "".join(f"<td>{_e(_num(r.metrics.get(m)))}</td>" for m in METRIC_COLUMNS)
            + f"<td>{expectations}</td><td>{_findings(run.findings)}</td><td>{_verdict(run.verdict)}</td></tr>")
    return f'<table class="runs"><colgroup>{cols}</colgroup>{head}{"".join(rows)}</table>'


def _critical_lr_table(searches: list[ReportSearch], anchor: Anchors) -> str:
    """One row per search: the critical lr and the interval the edge between stable and
    diverged learning rates lies in, its probes, expectations, baseline and verdict."""
    head = ("<tr><th>optimizer</th><th>seed</th><th>device</th><th>critical lr</th><th>edge interval</th>"
            "<th>probes (diverged)</th><th>expectations</th><th>baseline</th><th>verdict</th></tr>")
    rows = []
    for s in searches:
        found = s.found
        value = _num(found.get("value")) if found.get("value") is not None else f"unknown: {found.get('reason')}"
        interval = (f"[{_num(found.get('lower'))}, {_num(found.get('upper'))}]"
                    if found.get("lower") is not None and found.get("upper") is not None else "—")
        probes = found.get("probes") or []
        rows.append(f'<tr id="{anchor(s.search_id)}" class="{s.verdict or ""}"><td>{_e(s.optimizer)}</td>'
                    f"<td>{s.seed}</td><td>{_e(s.device)}</td><td>{_e(value)}</td><td>{_e(interval)}</td>"
                    f"<td>{len(probes)} ({sum(bool(d) for _, d in probes)})</td>"
                    f"<td>{''.join(_outcome(o) for o in s.outcomes) or '—'}</td><td>{_findings(s.findings)}</td>"
                    f"<td>{_verdict(s.verdict)}</td></tr>")
    return f'<table class="critical-lr">{head}{"".join(rows)}</table>'


def _failure_table(failures: list[dict], anchor: Anchors) -> str:
    rows = "".join(f'<tr id="{anchor(f["run_id"])}" class="failed"><td>{_e(f["run_id"])}</td><td>{_e(f.get("kind"))}</td>'
                   f'<td>{_e(f.get("step") if f.get("step") is not None else "—")}</td><td>{_e(f.get("error"))}</td></tr>'
                   for f in failures)
    return ('<table class="unfinished"><tr><th>run</th><th>kind</th><th>step</th><th>error</th></tr>'
            f"{rows}</table>")


def _reasons(item: ReportRun | ReportSearch) -> list[str]:
    """Why a run or search failed (or is stale), one line each."""
    out = [f"expectation {o.get('metric')} {o.get('comparator')} {_num(o.get('resolved_bound'))}: "
           f"{o.get('detail') or 'measured ' + _num(o.get('value'))}" for o in item.outcomes if not o.get("passed")]
    for f in item.findings:
        if f.get("status") in FAILED_FINDINGS:
            out.append(f"baseline {f.get('figure')} = {_num(f.get('value'))}, {_band(f)}"
                       + (f" ({f['direction']})" if f.get("direction") else "")
                       + (" — no baseline recorded" if f.get("status") == "missing" else ""))
        elif f.get("status") == "stale":
            out.append(f"baseline stale: {', '.join(map(str, f.get('changed') or [])) or 'the case'} changed")
    return out


def _failures(data: ReportData, anchor: Anchors) -> str:
    """Every failure (and stale baseline) at the top of the page, each linked to its row."""
    items = [(r.result.run_id, r.verdict, _reasons(r)) for r in data.runs if r.verdict in ("failed", "stale")]
    items += [(s.search_id, s.verdict, _reasons(s)) for s in data.searches if s.verdict in ("failed", "stale")]
    items += [(f["run_id"], "failed", [f"{f.get('kind')}: {f.get('error')}"]) for f in data.failures]
    if not items:
        return '<p class="ok" id="failures">Nothing failed.</p>'
    failed = [i for i in items if i[1] == "failed"]
    stale = [i for i in items if i[1] == "stale"]

    def listing(entries) -> str:
        return "<ol>" + "".join(f'<li><a href="#{anchor(key)}">{_e(key)}</a>: '
                                f"{'; '.join(_e(r) for r in reasons)}</li>" for key, _, reasons in entries) + "</ol>"

    parts = ['<section id="failures">']
    if failed:
        parts.append(f'<h2 class="bad">Failures ({len(failed)})</h2>{listing(failed)}')
    if stale:
        parts.append(f'<h2 class="stale">Stale baselines ({len(stale)})</h2>{listing(stale)}')
    return "".join(parts) + "</section>"


def _source(src: Mapping[str, Any]) -> str:
    if src.get("commit"):
        return (f"{src.get('commit')}{' (dirty: uncommitted changes)' if src.get('dirty') else ''} "
                f"in {src.get('repository')}")
    return f"not recorded: {src.get('reason')}"


def _environment(data: ReportData) -> str:
    env, runs = data.environment, data.runs
    rows = [("torch", env.get("torch")), ("devices", ", ".join(sorted({r.result.device for r in runs}))),
            ("dtypes", ", ".join(sorted({r.result.dtype for r in runs}))),
            ("stability-bench", env.get("stability_bench")), ("python", env.get("python")),
            ("numpy", env.get("numpy")), ("platform", env.get("platform")), ("CPU", env.get("cpu")),
            ("CUDA", f"{env.get('cuda')} (available: {env.get('cuda_available')}"
                     + (f", {env.get('cuda_device')}" if env.get("cuda_device") else "") + ")" if "cuda" in env else None)]
    sources = data.sources
    if not sources:
        rows.append(("commit", "not recorded in the results file (written before stability-bench recorded it)"))
    for src in sources:
        rows.append((f"commit of {src.get('case_file')}", _source(src)))
    return '<table class="env">' + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
                                           for k, v in rows if v is not None) + "</table>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}h3{font-size:1em}
table{border-collapse:collapse;font-size:0.8em;margin:0.6em 0}
table.runs,table.critical-lr,table.unfinished{table-layout:fixed;width:100%}
th,td{border:1px solid #ddd;padding:3px 5px;vertical-align:top;text-align:left;overflow-wrap:anywhere}
th{background:#f4f4f4;overflow-wrap:break-word;hyphens:auto}tr.failed td{background:#fff3f3}tr.stale td{background:#fffbe6}
.ok{color:#17702b;font-weight:600}.bad{color:#b00020;font-weight:600}.none{color:#777}
.stale{color:#8a6100;font-weight:600}
#failures li{margin:0.2em 0}:target td{outline:2px solid #b00020}
img{max-width:100%;border:1px solid #eee;margin:0.4em 0;display:block}
.desc{color:#444;max-width:60em}.small{color:#666;font-size:0.85em}
"""


def _counts(data: ReportData) -> str:
    verdicts = [r.verdict for r in data.runs]
    n = {v: verdicts.count(v) for v in ("passed", "failed", "stale", None)}
    searches = [s.verdict for s in data.searches]
    text = (f"{len(data.runs)} run(s): <span class='ok'>{n['passed']} passed</span>, "
            f"<span class='bad'>{n['failed']} failed</span>"
            + (f", <span class='stale'>{n['stale']} stale baseline</span>" if n["stale"] else "")
            + f", {n[None]} with nothing checked")
    if data.failures:
        text += f"; <span class='bad'>{len(data.failures)} did not finish</span>"
    if searches:
        text += (f"; {len(searches)} critical-lr search(es): {searches.count('passed')} passed, "
                 f"{searches.count('failed')} failed")
    return text


def render_html(data: ReportData | Sequence[ReportRun], figures: Sequence[FigureInfo],
                environment: Mapping[str, Any] | None = None, title: str = "stability-bench report") -> str:
    """The page, with each PNG figure read from disk and embedded. A run or search is
    "pass" only if its expectations and its baseline figures all held; every failure is
    listed at the top, linked to its row."""
    data = _as_data(data, environment)
    anchor = Anchors()
    cases = by_case(data.runs)
    searches_of: dict[str, list[ReportSearch]] = {}
    for s in data.searches:
        searches_of.setdefault(s.case, []).append(s)
    failures_of: dict[str, list[dict]] = {}
    for f in data.failures:
        failures_of.setdefault(f["run_id"].split("::", 1)[0], []).append(f)
    names = list(dict.fromkeys([*cases, *searches_of, *failures_of]))
    figures_of: dict[str, list[FigureInfo]] = {}
    for info in figures:
        figures_of.setdefault(info.case, []).append(info)

    def case_verdict(name: str) -> str:
        items = [*cases.get(name, []), *searches_of.get(name, [])]
        verdicts = {i.verdict for i in items}
        return "failed" if "failed" in verdicts or failures_of.get(name) else (
            "stale" if "stale" in verdicts else "passed" if "passed" in verdicts else None)

    toc = "".join(f'<li><a href="#{_e(safe_name(name))}">{_e(name)}</a> — {_verdict(case_verdict(name))}'
                  f" ({len(cases.get(name, []))} runs)</li>" for name in names)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width'><title>{_e(title)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>",
             f"<p>{len(names)} case(s), {_counts(data)}. "
             f"<span class='small'>Generated {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</span></p>",
             _failures(data, anchor), "<h2>Environment</h2>", _environment(data), f"<ul>{toc}</ul>"]
    for name in names:
        rs = cases.get(name, [])
        parts.append(f'<h2 id="{_e(safe_name(name))}">{_e(name)}</h2>')
        description = next((r.description for r in rs if r.description), "")
        if description:
            parts.append(f'<p class="desc">{_e(description)}</p>')
        if rs:
            parts.append(_case_table(rs, anchor))
        if failures_of.get(name):
            parts.append("<h3>Runs that did not finish</h3>" + _failure_table(failures_of[name], anchor))
        if searches_of.get(name):
            parts.append("<h3>Critical learning rate</h3>" + _critical_lr_table(searches_of[name], anchor))
        for info in figures_of.get(name, []):
            png = next((f for f in info.files if f.suffix == ".png"), None)
            if png is not None and png.exists():
                parts.append(f"<p class='small'>{_e(info.kind)}: {_e(info.title)} ({info.panels} panel{'s' if info.panels != 1 else ''}; "
                             f"files {_e(', '.join(f.name for f in info.files))})</p>")
                parts.append(_image(png, f"{name} {info.kind}"))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _as_data(data: ReportData | Sequence[ReportRun], environment: Mapping[str, Any] | None) -> ReportData:
    if isinstance(data, ReportData):
        return data if environment is None else ReportData(dict(environment), data.runs, data.searches,
                                                           data.failures)
    return ReportData(dict(environment or {}), list(data))


def write_report(data: ReportData | Sequence[ReportRun], out_dir: str | Path,
                 environment: Mapping[str, Any] | None = None, formats: Sequence[str] = FORMATS,
                 title: str = "stability-bench report") -> Report:
    """Figures for every case of ``data`` and ``index.html`` + ``manifest.json`` in ``out_dir``.
    The environment and commits shown are those the results recorded when the runs ran
    (a list of runs alone has none: the page says so)."""
    data = _as_data(data, environment)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    formats = tuple(dict.fromkeys(("png", *formats)))  # the page embeds the PNGs
    figures: list[FigureInfo] = []
    searches_of: dict[str, list[ReportSearch]] = {}
    for s in data.searches:
        searches_of.setdefault(s.case, []).append(s)
    cases = by_case(data.runs)
    for name in dict.fromkeys([*cases, *searches_of]):
        figures += case_figures(cases.get(name, []), out, stem=safe_name(name), formats=formats,
                                searches=searches_of.get(name, []), case=name)
    page = out / "index.html"
    page.write_text(render_html(data, figures, None, title), encoding="utf-8")
    manifest = out / "manifest.json"
    write_json_atomic(manifest, {
        "environment": data.environment, "sources": data.sources, "html": page.name,
        "figures": [{"kind": f.kind, "case": f.case, "title": f.title, "panels": f.panels,
                     "run_id": f.run_id, "run_ids": f.run_ids, "files": [p.name for p in f.files]} for f in figures],
        "runs": [{"run_id": r.result.run_id, "case": r.result.case, "verdict": r.verdict, "passed": r.passed}
                 for r in data.runs],
        "critical_lr": [{"search_id": s.search_id, "case": s.case, "verdict": s.verdict} for s in data.searches],
        "failures": [f["run_id"] for f in data.failures]})
    return Report(page, manifest, figures)


def report_from_files(paths: Sequence[str | Path], out_dir: str | Path,
                      formats: Sequence[str] = FORMATS) -> Report:
    """``stability-bench report``: read results files, write the report."""
    from stability_bench.reports.collect import read_results_file

    data = ReportData()
    for path in paths:
        data.extend(read_results_file(path))
    if not data.runs and not data.searches and not data.failures:
        raise ValueError(f"no runs in {', '.join(map(str, paths))}")
    return write_report(data, out_dir, None, formats)
