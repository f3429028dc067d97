"""Triage bundles: what a failed run leaves behind so its user can look at it.

:func:`write_triage` writes ``<root>/<run id>/``:

``case.yaml``            the case as run: this run's sweep point and seed resolved (one
                         optimizer, fixed hyperparameters, ``seeds: [seed]``, ``devices:
                         [device]``) — ``stability-bench run case.yaml`` repeats the run
``result.json``          the run and its checked expectations (a ``run --json`` results file,
                         so ``stability-bench report result.json`` reads it)
``*.training.png|svg``   the figures (when matplotlib is installed), with a zoom on the first
``*.spikes.png|svg``     spikes when there are some
``optimizer_state.pt``   ``optimizer.state_dict()`` and ``model.state_dict()`` at the worst
``model_state.pt``       step (:func:`worst_step`), recomputed by replaying the run
``triage.json``          the worst step and why, the failed expectations, how to load the state
``README.txt``           the same, for people

Bundles go to ``$STABILITY_BENCH_TRIAGE`` if set, else ``./triage`` (git-ignored). Only
failing runs get one; the caller decides that.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from stability_bench.expectations import partner_point
from stability_bench.metrics import SpikeConfig, detect_spikes
from stability_bench.reports import INSTALL_HINT, ReportDependencyError
from stability_bench.reports.collect import ReportRun, safe_name
from stability_bench.results import RunResult, results_payload, write_json_atomic

ENV_VAR = "STABILITY_BENCH_TRIAGE"
DEFAULT_DIR = "triage"


def default_triage_root() -> Path:
    """``$STABILITY_BENCH_TRIAGE``, else ``triage/`` in the working directory."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)


def worst_step(result: RunResult, spike_config: SpikeConfig | None = None) -> tuple[int, str]:
    """(step, why): the step whose state to keep — just before the first spike onset, else
    just before divergence, else the step of the minimum loss.

    ``replay(spec, step)`` gives the state just before optimizer step ``step``: its
    parameters are those the loss at ``step`` was measured at, and its update is the one
    that takes the run from ``step`` to ``step + 1``."""
    steps = np.asarray(result.history.get("step", []), dtype=np.int64)
    loss = np.array([np.nan if v is None else v for v in result.history.get("loss", [])], dtype=float)
    onsets = detect_spikes(loss, spike_config)
    if onsets.size:
        onset = int(steps[onsets[0]])
        cfg = spike_config or SpikeConfig()
        return max(onset - 1, 0), (f"just before the first spike: the loss at step {onset} is more than "
                                   f"{cfg.factor:g}× the median of the previous {cfg.window} steps; the "
                                   f"state is one update before it")
    if result.diverged and result.divergence_step is not None:
        step = max(int(result.divergence_step) - 1, 0)
        return step, f"just before divergence (declared at step {result.divergence_step})"
    m = result.metrics.get("min_loss_step")
    if m is None:
        finite = np.flatnonzero(np.isfinite(loss))
        m = int(steps[finite[np.argmin(loss[finite])]]) if finite.size else 0
    return int(m), f"the minimum loss (no spike, no divergence), at step {m}"


def _plain(value: Any) -> Any:
    """YAML-safe: tuples become lists, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def case_as_run(case, spec) -> dict:
    """The case dict of this one run: ``case.raw`` with the sweep point, seed and device
    resolved, and only this optimizer's expectations. An optimizer its expectations name
    (``parity: {with: other}``) stays, at the matching sweep point, so the case still loads
    and checks the same thing."""
    raw = copy.deepcopy(case.raw)
    raw.pop("variants", None)
    key = spec.optimizer.key
    optimizers = {key: {"class": spec.optimizer.class_name, **_plain(dict(spec.params))}}
    for checks in ((raw.get("expect") or {}).get(key) or {}).values():
        partner = checks.get("with") if isinstance(checks, dict) else None
        if isinstance(partner, str) and partner in case.optimizers and partner not in optimizers:
            try:
                point = partner_point(case, spec.params, partner)
            except ValueError:  # no matching point: keep the partner as written
                point = None
            optimizers[partner] = ({"class": case.optimizers[partner].class_name, **_plain(point)}
                                   if point is not None else raw["optimizers"][partner])
    raw["optimizers"] = optimizers
    raw["seeds"] = [int(spec.seed)]
    raw["devices"] = [spec.device]
    expect = raw.get("expect") or {}
    if key in expect:
        raw["expect"] = {key: expect[key]}
    else:
        raw.pop("expect", None)
    first = [k for k in ("name", "description", "seeds", "devices") if k in raw]
    return _plain({**{k: raw[k] for k in first}, **{k: v for k, v in raw.items() if k not in first}})


def _write_case_yaml(path: Path, case, spec, result: RunResult, failed: list[dict], why: str) -> None:
    import yaml

    lines = [f"# stability-bench triage bundle: {result.run_id}",
             f"# from {case.where()} as run on {time.strftime('%Y-%m-%d %H:%M:%S')}; the sweep point, "
             f"seed and device are resolved.",
             "# Repeat it: stability-bench run case.yaml",
             *(f"# FAILED {o.get('where')}: {o.get('optimizer')}.{o.get('metric')} {o.get('comparator')} "
               f"{o.get('resolved_bound')!r}: measured {o.get('value')!r}" for o in failed),
             f"# state saved: {why}"]
    body = yaml.safe_dump(case_as_run(case, spec), sort_keys=False, allow_unicode=True, width=100,
                          default_flow_style=None)
    path.write_text("\n".join(lines) + "\n" + body, encoding="utf-8")


def _save_state(spec, step: int, folder: Path) -> dict:
    """Replay the run to just before ``step``; save optimizer and model state."""
    import torch

    from stability_bench.runner import replay

    session = replay(spec, step)
    torch.save(session.optimizer.state_dict(), folder / "optimizer_state.pt")
    torch.save(session.model.state_dict(), folder / "model_state.pt")
    info: dict[str, Any] = {"step": step}
    if spec.case.batch.get("size") is None:  # full batch: the state's loss is the recorded one
        with torch.no_grad():
            info["loss_at_state"] = float(session.loss_fn(session.model(session.data.x), session.data.y))
    return info


def triage_or_reason(spec, result: RunResult, outcomes: Iterable[Any], root: str | Path | None = None) -> str:
    """The folder of the failed run's triage bundle, or why it was not written: the run's
    verdict stands either way, so a bundle that cannot be written is reported, not raised
    (what both the CLI and the pytest items print)."""
    return _or_reason(lambda: write_triage(spec.case, spec, result, outcomes, root))


def crash_triage_or_reason(spec, failure, root: str | Path | None = None) -> str:
    """As :func:`triage_or_reason`, for a run that crashed (:func:`write_crash_triage`)."""
    return _or_reason(lambda: write_crash_triage(spec, failure, root))


def _or_reason(write) -> str:
    try:
        return str(write())
    except Exception as exc:
        return f"not written ({type(exc).__name__}: {exc})"


def _bundle(root: str | Path | None, run_id: str, fill) -> Path:
    """Write a bundle folder ``root/<safe run id>/`` atomically: ``fill(folder)`` writes into
    a temporary folder that then replaces an older bundle of the same run."""
    root = Path(root) if root is not None else default_triage_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / safe_name(run_id)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)  # mkdtemp makes it private; a bundle is for sharing
    try:
        fill(work)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=root))
            os.replace(target, old / target.name)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target.resolve()


def write_crash_triage(spec, failure, root: str | Path | None = None) -> Path:
    """The bundle of a run that crashed (its optimizer or model raised): ``case.yaml`` (the
    run, to repeat it), ``error.txt`` (the traceback), ``triage.json`` (error and step) and,
    when it crashed while training, the optimizer and model state just before the step that
    raised (replayed; bit-identical on CPU)."""
    import yaml

    def fill(work: Path) -> None:
        header = [f"# stability-bench triage bundle: {failure.run_id} ({failure.kind})",
                  f"# from {spec.case.where()}; {failure.describe()}", "# Repeat it: stability-bench run case.yaml"]
        body = yaml.safe_dump(case_as_run(spec.case, spec), sort_keys=False, allow_unicode=True, width=100,
                              default_flow_style=None)
        (work / "case.yaml").write_text("\n".join(header) + "\n" + body, encoding="utf-8")
        (work / "error.txt").write_text(failure.traceback or failure.error, encoding="utf-8")
        state = _save_state(spec, failure.step, work) if failure.step is not None else {}
        write_json_atomic(work / "triage.json", {**failure.to_dict(), "case_file": spec.case.where(),
                                                 "state_saved_before_step": state.get("step")})

    return _bundle(root, failure.run_id, fill)


def write_triage(case, spec, result: RunResult, outcomes: Iterable[Any], root: str | Path | None = None,
                 formats: tuple[str, ...] = ("png", "svg")) -> Path:
    """Write the triage bundle of a failed run into ``root/<safe run id>/`` (replacing an
    older bundle of the same run) and return the folder.

    Figures need matplotlib; without it the bundle says so and holds everything else."""
    outcome_dicts = [o.to_dict() if hasattr(o, "to_dict") else dict(o) for o in outcomes]
    failed = [o for o in outcome_dicts if not o.get("passed")]
    step, why = worst_step(result, case.spikes)

    def fill(work: Path) -> None:
        _write_case_yaml(work / "case.yaml", case, spec, result, failed, why)
        payload = results_payload([(result, [])])
        payload["runs"][0]["expectations"] = outcome_dicts
        write_json_atomic(work / "result.json", payload)
        state = _save_state(spec, step, work)
        figures: list[str] = []
        figure_note = ""
        try:
            from stability_bench.reports.figures import case_figures

            run = ReportRun(result, outcome_dicts, case.spikes, case.description)
            for info in case_figures([run], work, stem=safe_name(result.case), formats=formats, zoom_run=run):
                figures += [f.name for f in info.files]
        except ReportDependencyError:
            figure_note = f"figures not drawn: matplotlib is not installed ({INSTALL_HINT})"
        loaded_loss = state.get("loss_at_state")
        recorded = result.history["loss"][step] if step < len(result.history.get("loss", [])) else None
        meta = {
            "run_id": result.run_id, "case_file": case.where(), "worst_step": step, "why": why,
            "loss_recorded_at_step": recorded, "loss_at_saved_state": loaded_loss,
            "failed": failed, "figures": figures, "figure_note": figure_note,
            "optimizer_class": result.optimizer_class, "params": _plain(result.params),
            "seed": result.seed, "device": result.device, "dtype": result.dtype,
            "replay_note": ("the state is recomputed by replaying the run; on CPU the replay is "
                            "bit-identical to the recorded run, on CUDA it may differ slightly"),
        }
        write_json_atomic(work / "triage.json", meta)
        (work / "README.txt").write_text(_readme(meta), encoding="utf-8")

    return _bundle(root, result.run_id, fill)


def _readme(meta: dict) -> str:
    failed = "\n".join(f"  {o.get('where')}: {o.get('optimizer')}.{o.get('metric')} {o.get('comparator')} "
                       f"{o.get('resolved_bound')!r} — measured {o.get('value')!r}" for o in meta["failed"])
    figures = "\n".join(f"  {name}" for name in meta["figures"]) or f"  ({meta['figure_note']})"
    return f"""Triage bundle of {meta['run_id']}
case file: {meta['case_file']}

Failed expectations:
{failed or '  (none recorded)'}

Repeat the run:       stability-bench run case.yaml
Redraw the figures:   stability-bench report result.json --out report/
Figures:
{figures}

Saved state: step {meta['worst_step']} — {meta['why']}.
It is the state just before optimizer step {meta['worst_step']} (the parameters the loss at that
step was measured at). Load it into the run's model and optimizer:

    import torch, stability_bench as sb
    from stability_bench.plan import plan_runs
    from stability_bench.runner import start
    session = start(plan_runs(sb.load_case("case.yaml"))[0])
    session.model.load_state_dict(torch.load("model_state.pt"))
    session.optimizer.load_state_dict(torch.load("optimizer_state.pt"))
    batches = iter(session.batches)   # minibatch runs: the batch order is seeded;
    for _ in range({meta['worst_step']}): next(batches)   # skip the batches already used

{meta['replay_note']}.
"""
