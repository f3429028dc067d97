"""Run results and their JSON form, written atomically.

A :class:`RunResult` is one (case, optimizer, sweep point, seed, device). It is plain data
that later stages (metrics, expectations, reports, asv) read and that can grow new
history columns (probes) without changing its shape.
"""
from __future__ import annotations

import functools
import json
import math
import os
import platform
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

FORMAT = "stability-bench-results"
VERSION = 1


def format_run_id(case: str, optimizer: str, label: str, seed: int, device: str, perturb: int = 0) -> str:
    """``case::optimizer[lr=0.1]-seed0-cpu``: names one run in results, items and reports
    (``-perturb1``: its initial parameters nudged by one ulp, for baseline noise bands)."""
    point = f"[{label}]" if label else ""
    return f"{case}::{optimizer}{point}-seed{seed}-{device}" + (f"-perturb{perturb}" if perturb else "")


@dataclass
class RunResult:
    case: str
    run_id: str
    optimizer: str                  # the key under ``optimizers:``
    optimizer_class: str            # as written in the case
    params: dict[str, Any]          # the full hyperparameters of this sweep point
    seed: int
    device: str
    dtype: str
    steps: int                      # steps the case asked for
    diverged: bool
    divergence_step: int | None
    metrics: dict[str, Any]
    history: dict[str, list]        # column → one value per recorded step ("step", "loss", ...)
    # Curvature probes, sparse in time: column → values at the probed steps ("step" lists them).
    probes: dict[str, list] = field(default_factory=dict)
    theory: dict[str, Any] = field(default_factory=dict)   # threshold, sharpness, predicted_diverged
    # ``eval:`` losses, sparse in time like probes: "step" and "eval_loss" columns.
    evals: dict[str, list] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)     # wall time, versions

    def to_dict(self) -> dict:
        return _json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "RunResult":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class RunFailure:
    """A run that did not finish: bad set-up (``setup``), its data missing here
    (``missing_data``), an exception while training (``crash``) or past the case's
    ``timeout:`` (``timeout``)."""

    run_id: str
    kind: str                 # setup | missing_data | crash | timeout
    error: str                # "ExceptionType: message"
    step: int | None = None   # the training step that raised, when known
    traceback: str = ""

    def describe(self) -> str:
        at = f" at step {self.step}" if self.step is not None else ""
        what = {"crash": "crashed", "timeout": "timed out", "setup": "could not be set up",
                "missing_data": "has no data here"}[self.kind]
        return f"{self.run_id}: {what}{at}: {self.error}"

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "kind": self.kind, "error": self.error, "step": self.step,
                "traceback": self.traceback}


def _json_safe(value: Any) -> Any:
    """Tuples become lists, non-finite floats become None (strict JSON has no inf/nan)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """Where runs ran: package versions, platform, CPU model and CUDA device. Recorded in
    results and baselines; a baseline check prints how it differs (never failing on it)."""
    import numpy
    import torch

    import stability_bench

    cuda = torch.cuda.is_available()
    return {"stability_bench": stability_bench.__version__, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": numpy.__version__, "platform": platform.platform(),
            "cpu": _cpu_model(), "cuda": torch.version.cuda, "cuda_available": cuda,
            "cuda_device": torch.cuda.get_device_name(0) if cuda else None}


def case_source(case_file: str | Path | None) -> dict[str, Any]:
    """Where a case file came from, read when its runs start: the git repository holding
    it (``git -C <its folder>``), that repository's commit and whether tracked or untracked
    files differ from it (``dirty``). It is the user's project under test, not
    stability-bench's checkout, and it is recorded at run time because by report time the
    repository may have moved on. ``commit`` is None with a ``reason`` when the case has no
    file, git is missing, or the folder is in no repository."""
    out: dict[str, Any] = {"case_file": None if case_file is None else str(Path(case_file).resolve()),
                           "repository": None, "commit": None, "dirty": None, "reason": None}
    if case_file is None:
        return {**out, "reason": "the case was given as a dict, not a file"}
    folder = Path(case_file).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0:
            return {**out, "reason": f"not in a git repository ({top.stderr.strip() or 'git rev-parse failed'})"}
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {**out, "repository": top.stdout.strip(),
                    "reason": f"the repository has no commit yet ({head.stderr.strip()})"}
        status = git("status", "--porcelain")
    except FileNotFoundError:
        return {**out, "reason": "git is not installed here"}
    except (OSError, subprocess.SubprocessError) as exc:
        return {**out, "reason": f"git failed: {type(exc).__name__}: {exc}"}
    return {**out, "repository": top.stdout.strip(), "commit": head.stdout.strip(),
            "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None,
            "reason": None if status.returncode == 0 else f"git status failed: {status.stderr.strip()}"}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as JSON to ``path`` so that readers see the old file or the whole new
    one, never half of it (temporary file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(_json_safe(payload), handle, indent=1, allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a results file is for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def run_entry(run: RunResult, outcomes: Iterable[Any], source: dict | None = None) -> dict:
    """One run of a results file: its result, its checked expectations and, when known, its
    case file's :func:`case_source` (read when the run started)."""
    entry = {**run.to_dict(), "expectations": [o.to_dict() for o in outcomes]}
    return entry if source is None else {**entry, "source": source}


def results_payload(runs: Iterable[tuple[RunResult, list]], failures: Iterable[dict] = (),
                    critical_lr: Iterable[dict] = ()) -> dict:
    """The results file: environment, each run with its checked expectations, the runs that
    did not finish (``failures``: run id, kind, error, step) and critical-lr searches."""
    return _payload([run_entry(run, outcomes) for run, outcomes in runs], failures, critical_lr)


def _payload(runs: Iterable[dict], failures: Iterable[dict], critical_lr: Iterable[dict]) -> dict:
    return {"format": FORMAT, "version": VERSION, "environment": environment(), "runs": list(runs),
            "failures": list(failures), "critical_lr": list(critical_lr)}


class ResultsJournal:
    """``--json FILE`` without rewriting the file per run: each finished run is appended
    as one JSON line to ``.FILE.journal`` (flushed and fsynced: an interrupted or killed
    invocation keeps what finished), and :meth:`close` compacts the journal into FILE
    atomically, runs in the order given, and removes it.

    The folder is checked when the journal opens, before any run trains."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise OSError(f"--json {path}: is a folder; name a file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.journal = self.path.parent / f".{self.path.name}.journal"
            self._handle = open(self.journal, "w", encoding="utf-8")
        except OSError as exc:
            raise OSError(f"--json {path}: cannot write there ({exc.strerror or exc})") from None

    def append(self, entry: dict) -> None:
        """One finished run (``run_entry``), failure (``{"failure": ...}``) or critical-lr
        search (``{"search": ...}``)."""
        self._handle.write(json.dumps(_json_safe(entry), allow_nan=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self, order: list[str] | None = None) -> None:
        """Write FILE from the journal (runs sorted by their place in ``order``)."""
        self._handle.close()
        entries = [json.loads(line) for line in self.journal.read_text(encoding="utf-8").splitlines() if line]
        rank = {run_id: i for i, run_id in enumerate(order or [])}

        def place(entry: dict) -> tuple:
            run_id = entry.get("run_id") or (entry.get("failure") or {}).get("run_id") or entry["search"]["search_id"]
            return (rank.get(run_id, len(rank)), run_id)

        entries.sort(key=place)
        write_json_atomic(self.path, _payload([e for e in entries if "run_id" in e],
                                              [e["failure"] for e in entries if "failure" in e],
                                              [e["search"] for e in entries if "search" in e]))
        self.journal.unlink()


def read_results(path: str | Path) -> list[RunResult]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a stability-bench results file")
    return [RunResult.from_dict(run) for run in data["runs"]]
