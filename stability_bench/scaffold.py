"""``stability-bench init``: guard a user's own optimizer in the user's own repository.

Writes three things into a project folder, refusing to overwrite any of them (a second
``init``, for another optimizer, adds its case and keeps the workflow and pytest.ini an
earlier ``init`` wrote: they cover every case in ``cases/``):

* ``cases/guard_<name>.yaml`` — one marked case that trains a small tanh MLP on a random
  teacher (8→16→2, 64 examples, full batch, float32, 200 steps, two seeds: a fraction of a
  second of CPU per run, like the shipped ``torch_optim_guards_*`` cases) with the optimizer
  named by import path. Its guard is the baseline (``stability-bench baseline`` records every
  figure with a noise band from one-ulp nudges; a changed optimizer leaves the bands); the
  case itself states only that the run must not diverge.
* ``pytest.ini`` — so the project folder is pytest's rootdir from any subdirectory (the
  plugin then collects ``cases/`` from there too, see
  :func:`stability_bench.pytest_plugin._collect_cases_from_a_subdirectory`), the baselines
  are checked (``--stability-baseline``) and the project's modules import (``pythonpath``).
  An existing pytest configuration is kept, and the message says what to add to it.
* ``.github/workflows/stability.yml`` — installs the pinned torch, stability-bench and the
  project, validates the cases and runs them with pytest against their baselines.

The case is validated before anything is written (the optimizer must import and accept
the hyperparameters), so init never leaves a case that ``validate`` would refuse.
"""
from __future__ import annotations

import inspect
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CASES = "cases"
PYTEST_INI = "pytest.ini"
WORKFLOW = Path(".github") / "workflows" / "stability.yml"
MARKER = "# Written by `stability-bench init`"   # the first comment of each file init writes
DEFAULT_LR = 1.0e-3   # written only for an optimizer whose lr has no default

# Files where pytest finds its configuration, and the section that makes each one count
# (None: the file counts as it is).
PYTEST_CONFIGS = {"pytest.ini": None, ".pytest.ini": None, "pyproject.toml": "[tool.pytest.ini_options]",
                  "tox.ini": "[pytest]", "setup.cfg": "[tool:pytest]"}


class InitError(ValueError):
    """``init`` cannot scaffold: nothing was written; the message says why."""


@dataclass
class Scaffold:
    """What ``init`` wrote, and the pytest configuration it kept (if any)."""

    written: list[Path]
    kept_config: Path | None   # the user's own pytest configuration
    case: Path
    kept: list[Path] = field(default_factory=list)   # an earlier init's workflow and pytest.ini


def class_spec(optimizer: str) -> str:
    """The case file's ``class:`` spelling of ``optimizer``: ``package.module:ClassName``
    (also given as ``package.module.ClassName``), ``torch.optim.NAME`` or ``reference.NAME``."""
    if ":" in optimizer or optimizer.startswith(("torch.optim.", "reference.")):
        return optimizer
    module, dot, name = optimizer.rpartition(".")
    if not dot or not module or not name:
        raise InitError(f"--optimizer {optimizer!r}: name the class by import path, "
                        f"package.module:ClassName (or package.module.ClassName)")
    return f"{module}:{name}"


def _written_by_init(path: Path) -> bool:
    """Whether ``path`` is a file an earlier ``init`` wrote (its marker comment at the top)."""
    if not path.is_file():
        return False
    head = path.read_text(encoding="utf-8", errors="replace").splitlines()[:2]
    return any(line.startswith(MARKER) for line in head)


def _existing_pytest_config(root: Path) -> Path | None:
    for name, section in PYTEST_CONFIGS.items():
        path = root / name
        if path.is_file() and (section is None or section in path.read_text(encoding="utf-8", errors="replace")):
            return path
    return None


def _hyperparameters(cls: type, spec: str) -> dict[str, float]:
    """What the case must write for the class to build: ``lr`` when it has no default;
    any other hyperparameter without a default is one init cannot choose."""
    from stability_bench.typecheck import arguments

    defaults = arguments(cls.__init__, skip=2).defaults   # past self, params
    required = [name for name, default in defaults.items() if default is inspect.Parameter.empty]
    unknown = [name for name in required if name != "lr"]
    if unknown:
        raise InitError(f"--optimizer {spec}: its __init__ needs {', '.join(map(repr, unknown))} without a "
                        f"default, which init cannot choose; write the case by hand (README: The case format), "
                        f"or give them defaults")
    return {"lr": DEFAULT_LR} if "lr" in required else {}


def _case_text(spec: str, key: str, name: str, hyper: dict[str, float]) -> str:
    entry = ", ".join([f"class: {spec}"] + [f"{k}: {v!r}" for k, v in hyper.items()])
    lr_note = (f"\n# lr {DEFAULT_LR!r} was chosen by init ({spec} has no default lr): set the one you use."
               if hyper else "\n# The optimizer runs at its own default hyperparameters: add the ones you ship.")
    return f"""stability-bench: 1
# Written by `stability-bench init` to guard {spec}.
#
# A small, smooth problem: a 8→16→2 tanh MLP fitted full batch to 64 examples of a random
# teacher of the same shape (float32, 200 steps, seeds 0 and 1; well under a second of CPU
# per run). The guard is the baseline beside this file: `stability-bench baseline cases/`
# records every figure (final and minimum loss, spikes, late instability, the early
# trajectory) with a noise band measured by nudging the initial parameters one ulp, and
# `python -m pytest` (or `stability-bench run cases/ --baseline`) fails when a change to the
# optimizer moves a figure out of its band, naming the figure, the band and the value.
# After an intended change, re-record the baseline and review its diff.{lr_note}
#
# To state what must hold beyond "no regression", add expectations (README: The case
# format), e.g. that it tracks a reference implementation step for step:
#   optimizers:  ... reference: {{class: torch.optim.Adam, lr: 1.0e-3}}
#   expect:      {key}: {{parity: {{with: reference, rtol: 1.0e-5}}}}
name: {name}
description: >
  Regression guard for {spec}: a small tanh MLP fitted full batch to a random teacher;
  every figure checked against the recorded baseline.
seeds: [0, 1]
devices: [cpu]
dtype: float32
model: {{kind: mlp, widths: [8, 16, 2], activation: tanh}}
data:  {{kind: teacher, n: 64, widths: [8, 16, 2]}}
loss:  {{kind: mse, reduction: mean}}
batch: full
steps: 200
optimizers:
  {key}: {{{entry}}}
expect:
  {key}:
    diverged: {{equals: false}}
"""


PYTEST_INI_TEXT = f"""[pytest]
{MARKER}. This file makes this folder pytest's rootdir from any
# subdirectory, so `python -m pytest` anywhere in the project collects the stability cases in
# cases/ (the stability-bench plugin adds them to a run started in a subdirectory).
# --stability-baseline: every case item is also checked against the baseline beside its file
# (record it with `stability-bench baseline cases/`). pythonpath: the project's own modules
# import without installing it.
addopts = --stability-baseline
pythonpath = .
"""


def _workflow_text(spec: str, installs_project: bool) -> str:
    import torch

    import stability_bench

    torch_version = torch.__version__.split("+")[0]
    project = ("      - name: Install this project\n        run: python -m pip install -e .\n"
               if installs_project else "")
    return f"""{MARKER} (first to guard {spec}): runs every case in cases/ on every push and pull request.
# The baselines in cases/ were recorded with torch {torch_version}: CI pins it, since another
# torch may round differently (re-record the baselines when you upgrade it).
name: stability

on:
  push:
  pull_request:
  workflow_dispatch:

permissions:
  contents: read

env:
  PIP_EXTRA_INDEX_URL: https://download.pytorch.org/whl/cpu   # torch's CPU build
  PIP_DISABLE_PIP_VERSION_CHECK: "1"
  PYTHONPATH: ${{{{ github.workspace }}}}   # the project's own modules, for the CLI
  # Where CI gets stability-bench: a version on your package index, or a git URL
  # ('stability-bench @ git+https://...'), as you installed it.
  STABILITY_BENCH: stability-bench=={stability_bench.__version__}

jobs:
  stability:
    runs-on: ubuntu-latest
    timeout-minutes: 30
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      - name: Install torch, stability-bench and pytest
        run: python -m pip install torch=={torch_version} "$STABILITY_BENCH" pytest
{project}      - name: Validate the cases
        run: stability-bench validate cases/
      - name: Run the cases against their baselines
        run: python -m pytest cases/ --stability-baseline
      - name: Keep the triage bundles of failed cases
        if: failure()
        uses: actions/upload-artifact@v4
        with:
          name: stability-triage
          path: triage/
          if-no-files-found: ignore
"""


def init_project(root: str | Path, optimizer: str) -> Scaffold:
    """Scaffold ``root`` to guard ``optimizer``; :class:`InitError` (nothing written) when a
    file it would write exists, or the optimizer does not import or build."""
    from stability_bench.optimizers.resolve import OptimizerResolveError, resolve_optimizer_class
    from stability_bench.schema import CaseError, load_cases

    root = Path(root)
    spec = class_spec(optimizer)
    try:
        cls = resolve_optimizer_class(spec)
    except OptimizerResolveError as exc:
        raise InitError(f"--optimizer {spec}: {exc} (it must import here: install your project, "
                        f"e.g. pip install -e ., or put it on PYTHONPATH)") from None
    key = re.sub(r"\W+", "_", cls.__name__).strip("_").lower() or "optimizer"
    case_path = root / CASES / f"guard_{key}.yaml"
    config = _existing_pytest_config(root)
    kept = [p for p in (root / WORKFLOW, config) if p is not None and _written_by_init(p)]
    if config in kept:
        config = None
    targets = [p for p in [case_path, root / WORKFLOW] + ([] if config else [root / PYTEST_INI]) if p not in kept]
    present = [str(p) for p in targets if p.exists()]
    if present:
        raise InitError(f"not overwriting {', '.join(present)}: move or delete "
                        f"{'it' if len(present) == 1 else 'them'} first (nothing was written)")
    text = _case_text(spec, key, f"guard_{key}", _hyperparameters(cls, spec))
    with tempfile.TemporaryDirectory() as scratch:   # validated as written, before writing
        draft = Path(scratch) / case_path.name
        draft.write_text(text, encoding="utf-8")
        try:
            load_cases(draft)
        except CaseError as exc:
            raise InitError(f"--optimizer {spec}: the guard case would not validate (nothing was "
                            f"written):\n{str(exc).replace(str(draft), str(case_path))}") from None
    installs = (root / "pyproject.toml").is_file() or (root / "setup.py").is_file()
    contents = {path: body for path, body in [(case_path, text), (root / WORKFLOW, _workflow_text(spec, installs)),
                                               (root / PYTEST_INI, PYTEST_INI_TEXT)] if path in targets}
    for path, body in contents.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="utf-8") as f:   # "x": never over a file that appeared meanwhile
            f.write(body)
    return Scaffold(written=list(contents), kept_config=config, case=case_path, kept=kept)
