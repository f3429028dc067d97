"""The case format: load a YAML file (or a dict), validate it, and expand it into cases.

Validation is derived, not hand-written per key: component parameters are checked against
their factory's signature, optimizer hyperparameters against the optimizer's ``__init__``,
metrics and comparators against their registries. Every problem is reported as
``file:line: key.path: what is wrong (and the nearest valid choice)``.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Literal, Mapping, Union

from stability_bench.components import Count
from stability_bench.components.building import HARNESS_KEYS, takes_context
from stability_bench.components.data import DATA
from stability_bench.components.losses import LOSSES
from stability_bench.components.models import MODELS
from stability_bench.contracts import ContractError, step_contract
from stability_bench.critical_lr import SECTION as CRITICAL_LR
from stability_bench.critical_lr import validate_section as critical_lr_section
from stability_bench.expectations import COMPARATORS, PARITY, PARITY_KEYS, THEORY_REFERENCES
from stability_bench.metrics import METRICS, probe_columns
from stability_bench.optimizers.resolve import OptimizerResolveError, resolve_optimizer_class
from stability_bench.registry import ImportPathError, Registry, UnknownNameError, describe_exception
from stability_bench.probes.registry import (PLAN_OPTIONS, PROBES, RESERVED_PROBE_OPTIONS, probes_for,
                                             probes_recording)
from stability_bench.registry import a_or_an, load_entry_points, nearest
from stability_bench.schedules import SHORTHAND_KEYS, scheduler_class, unsupported_step
from stability_bench.types import Case, CaseError, Expectation, OptimizerSpec, SpikeConfig
from stability_bench.typecheck import NUMBER_STRING as _NUMBER_STRING
from stability_bench.typecheck import PLAIN as _PLAIN
from stability_bench.typecheck import arguments as _arguments
from stability_bench.typecheck import check_mapping as _check_mapping
from stability_bench.typecheck import is_union as _is_union
from stability_bench.typecheck import matches as _matches
from stability_bench.typecheck import type_problem as _type_problem
from stability_bench.typecheck import unknown_message as _unknown
from stability_bench.unknown_theory import theory_problems
from stability_bench.yamlsource import MARKER, KeyPath, Problem, Source, SourceError, read_yaml

FORMAT_VERSION = 1      # the value of the ``stability-bench:`` marker this version reads
# Every step's loss, gradient and update norm is kept in memory and written to the results
# JSON (~100 bytes a step in all), so 10**7 steps is already ~1 GB; the shipped cases use <= 5000.
MAX_STEPS = 10**7



# ----------------------------------------------------------------------- components
def _resolve(registry: Registry, name: Any, path: KeyPath, problems: list[Problem], what: str) -> Any:
    """``registry.get(name)`` — a registered name, an import path or an entry point's
    component — or a located problem (unknown name, failed import, not callable)."""
    try:
        obj = registry.get(name)
    except ImportPathError as exc:
        problems.append(Problem(path, str(exc)))
        return None
    except UnknownNameError as exc:
        broken = f" Entry points that failed to load: {'; '.join(exc.broken)}." if exc.broken else ""
        problems.append(Problem(path, _unknown(what, name, registry.names()) + broken
                                + " Or name one by import path: 'package.module:name'."))
        return None
    if not callable(obj):
        problems.append(Problem(path, f"{name!r} is {a_or_an(type(obj).__name__)}, not a callable {what}"))
        return None
    return obj


def _check_component(spec: Any, registry: Registry, path: KeyPath, problems: list[Problem]) -> None:
    if not isinstance(spec, dict) or "kind" not in spec:
        problems.append(Problem(path, f"expected a mapping with a 'kind' (one of "
                                      f"{', '.join(registry.names())}), got {spec!r}"))
        return
    kind = spec["kind"]
    factory = _resolve(registry, kind, path + ("kind",), problems, f"{registry.kind} kind")
    if factory is None:
        return
    factory = registry.get(kind)
    args = _arguments(factory, skip=1 if takes_context(factory) else 0)
    allowed, required = args.hints, args.required
    own = HARNESS_KEYS.get(registry.kind, {})  # keys the harness applies itself (loss: negate)
    params = {k: v for k, v in spec.items() if k != "kind"}
    n = len(problems)
    _check_mapping(params, {**allowed, **own}, required, path, problems, f"{registry.kind} {kind!r}", finite=True)
    check = getattr(factory, "check", None)
    if check is not None and len(problems) == n:  # cross-parameter checks need well-typed values
        factory_params = {k: v for k, v in params.items() if k not in own}
        problems.extend(Problem(path + (key,), message) for key, message in check(factory_params))


def _check_targets(raw: dict, got: dict, problems: list[Problem]) -> None:
    """A loss that needs class labels on a data set that gives real-valued targets."""
    loss, data = raw.get("loss"), raw.get("data", {"kind": "none"})
    if not (isinstance(loss, dict) and isinstance(data, dict)
            and loss.get("kind") in LOSSES and data.get("kind") in DATA):
        return
    needs = getattr(LOSSES.get(loss["kind"]), "needs_targets", None)
    gives = getattr(DATA.get(data["kind"]), "targets", None)
    if needs and gives and needs != gives:
        problems.append(Problem(("loss", "kind"), f"loss {loss['kind']!r} needs {needs} as targets, but "
                                f"data {data['kind']!r} gives {gives}-valued targets; use loss: "
                                f"{{kind: mse}}, or a data set with {needs}"))


# ----------------------------------------------------------------------- optimizers


def _coerce(value: Any, hint: Any) -> Any:
    """YAML lists become tuples where the hyperparameter is a tuple (``betas``)."""
    return tuple(value) if typing.get_origin(hint) is tuple and isinstance(value, list) else value


def _hparam_hint(default: Any, annotation: Any) -> Any:
    """The type a hyperparameter must have: its annotation where YAML can write it (a union
    may also hold Tensor), else the type of its default; Any when neither says."""
    def writable(hint: Any) -> bool:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (list, tuple, dict, Annotated) or _is_union(origin):
            return any(writable(a) for a in args if a is not Ellipsis)
        return origin is Literal or hint in _PLAIN
    if annotation is not None and writable(annotation):
        return annotation
    if isinstance(default, bool):
        return bool
    if isinstance(default, (int, float)):
        return float
    if isinstance(default, str):
        return str
    if isinstance(default, tuple) and default:
        return tuple[tuple(_hparam_hint(d, None) for d in default)]
    return Any


def _unannotated(hint: Any) -> Any:
    """A hint without its ``Annotated`` extras; Any (no annotation) as None."""
    if typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    return None if hint is Any else hint


def _check_hparam(value: Any, hint: Any, path: KeyPath, problems: list[Problem]) -> None:
    problem = _type_problem(value, hint, path, finite=True)
    if problem:
        problems.append(problem)


MIN_TORCH = "min_torch"


def _torch_version() -> tuple[int, ...]:
    import torch

    return _version_tuple(torch.__version__)


def _version_tuple(text: str) -> tuple[int, ...]:
    """'2.13.0+cpu' → (2, 13, 0); a pre-release ('2.9.0a0') counts as its release."""
    return tuple(int(x) for x in re.match(r"\d+(?:\.\d+)*", text).group(0).split("."))


def _unmet_torch_requirement(spec: dict, path: KeyPath, problems: list[Problem]) -> str | None:
    """Why this torch cannot run the entry (``min_torch: "2.9"``: an optimizer or a
    hyperparameter that older releases lack), or None. The version is a quoted string:
    YAML reads 2.10 as the number 2.1."""
    if MIN_TORCH not in spec:
        return None
    wanted = spec[MIN_TORCH]
    if not isinstance(wanted, str) or not re.fullmatch(r"\d+(\.\d+){0,2}", wanted):
        problems.append(Problem(path + (MIN_TORCH,), f"min_torch is a quoted release such as '2.9' "
                                f"(YAML reads 2.10 unquoted as 2.1), got {wanted!r}"))
        return None
    have = _torch_version()
    if have >= _version_tuple(wanted):
        return None
    return f"needs torch >= {wanted} (min_torch); this is torch {'.'.join(map(str, have))}"


def _optimizer_spec(key: str, spec: Any, path: KeyPath, problems: list[Problem],
                    dtype: str = "float32") -> OptimizerSpec | None:
    n_before = len(problems)
    if not isinstance(spec, dict) or "class" not in spec:
        problems.append(Problem(path, f"optimizer {key!r} must be a mapping with a 'class' "
                                      f"(e.g. torch.optim.Adam), got {spec!r}"))
        return None
    unmet = _unmet_torch_requirement(spec, path, problems)
    if unmet is not None:   # nothing about the class can be checked here; run ids still need the sweeps
        given = {k: v for k, v in spec.items() if k not in ("class", MIN_TORCH)}
        sweeps = {k: list(v["sweep"]) for k, v in given.items() if isinstance(v, dict) and isinstance(v.get("sweep"), list)}
        fixed = {k: v for k, v in given.items() if k not in sweeps}
        return OptimizerSpec(key, spec["class"], None, fixed, sweeps, unavailable=unmet)
    spec = {k: v for k, v in spec.items() if k != MIN_TORCH}
    try:
        cls = resolve_optimizer_class(spec["class"])
    except OptimizerResolveError as exc:
        problems.append(Problem(path + ("class",), str(exc)))
        return None
    try:
        step_contract(cls)
    except ContractError as exc:
        problems.append(Problem(path + ("class",), str(exc)))
        return None
    args = _arguments(cls.__init__, skip=2)   # past self, params
    accepted, var_kw = args.defaults, args.var_kw
    hints = {name: _hparam_hint(default, _unannotated(args.hints[name])) for name, default in accepted.items()}
    for name in [n for n, d in accepted.items() if d is inspect.Parameter.empty]:
        if name not in spec and not nearest(name, [str(k) for k in spec if k not in accepted]):  # not a typo'd key
            problems.append(Problem(path, f"{spec['class']} needs the hyperparameter {name!r}"))
    fixed, sweeps = {}, {}
    for name, value in spec.items():
        if name == "class":
            continue
        hp_path = path + (name,)
        if name not in accepted and not var_kw:
            guess = nearest(name, list(accepted))
            problems.append(Problem(hp_path, f"{spec['class']} has no hyperparameter {name!r}"
                                    + (f"; did you mean {guess!r}?" if guess else
                                       f"; it takes {', '.join(accepted)}")))
            continue
        hint = hints.get(name, Any)
        if isinstance(value, dict):
            if set(value) != {"sweep"}:
                problems.append(Problem(hp_path, f"a hyperparameter mapping must be "
                                        f"{{sweep: [v1, v2, ...]}}, got keys {sorted(map(str, value))}"))
                continue
            points = value["sweep"]
            if not isinstance(points, list) or not points:
                problems.append(Problem(hp_path + ("sweep",), f"sweep needs a non-empty list of "
                                        f"values, got {points!r}"))
                continue
            if any(isinstance(p, dict) for p in points):
                problems.append(Problem(hp_path + ("sweep",), "sweep values cannot be mappings"))
                continue
            for i, point in enumerate(points):
                if isinstance(point, list) and typing.get_origin(hint) not in (list, tuple):
                    problems.append(Problem(hp_path + ("sweep", i), f"a sweep is a flat list of values "
                                            f"[v1, v2, ...], got the list {point!r} as one value"))
                else:
                    _check_hparam(point, hint, hp_path + ("sweep", i), problems)
            if len(set(map(repr, points))) != len(points):
                problems.append(Problem(hp_path + ("sweep",), f"sweep repeats a value: {points!r}"))
            sweeps[name] = [_coerce(p, hint) for p in points]
        else:
            _check_hparam(value, hint, hp_path, problems)
            fixed[name] = _coerce(value, hint)
    parsed = OptimizerSpec(key, spec["class"], cls, fixed, sweeps)
    if len(problems) == n_before:  # well-typed: does the class accept them?
        defaults = {n for n, d in accepted.items() if d is not inspect.Parameter.empty}
        problems.extend(_construction_problems(parsed, defaults, dtype, path))
    return parsed


@contextlib.contextmanager
def _no_dynamo_import() -> Iterator[None]:
    """``Optimizer.__init__`` calls ``add_param_group``, which torch wraps in
    ``torch._disable_dynamo``: its first call imports torch._dynamo (~1 s) only to mark the
    method uncompilable. Building an optimizer at validation compiles nothing, so while this
    is active the wrapper calls the plain method (the wrapper's own cache attribute), unless
    torch._dynamo is already imported. Restored on exit."""
    import sys

    import torch

    plain = getattr(torch.optim.Optimizer.add_param_group, "__wrapped__", None)
    if "torch._dynamo" in sys.modules or plain is None or hasattr(plain, "__dynamo_disable"):
        yield
        return
    setattr(plain, "__dynamo_disable", plain)
    try:
        yield
    finally:
        if getattr(plain, "__dynamo_disable", None) is plain:
            delattr(plain, "__dynamo_disable")


DUMMY_SHAPE = (2, 2)  # a matrix: optimizers for matrices (Muon) accept it, and so does every other


def _refusal(cls: type, params: dict[str, Any], dtype: str) -> str | None:
    """None if ``cls`` can be built with ``params`` on a dummy parameter, else what it
    raised (``Type: message``): the constructor is the optimizer's own check of its
    hyperparameters. Nothing trains; warnings it gives are the run's to show."""
    import warnings

    import torch

    dummy = torch.nn.Parameter(torch.zeros(DUMMY_SHAPE, dtype=getattr(torch, dtype)))
    try:
        with warnings.catch_warnings(), _no_dynamo_import():
            warnings.simplefilter("ignore")
            cls([dummy], **params)
    except Exception as exc:  # any type: the user's constructor refusing is one outcome
        return describe_exception(exc)
    return None


def _names(message: str, name: str, value: Any) -> bool:
    """Whether an exception's message names hyperparameter ``name`` or quotes its value."""
    if re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", message):
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or str(value) in ("0", "1", ""):
        return False
    return re.search(rf"(?<![\w.]){re.escape(str(value))}(?![\w.])", message) is not None


def _construction_problems(spec: OptimizerSpec, defaults: set[str], dtype: str, path: KeyPath) -> list[Problem]:
    """Build the optimizer as a run would, on a dummy parameter, with each swept value once
    (:meth:`OptimizerSpec.each_value`: the sum of the sweep sizes, not their product): what
    its constructor refuses is a problem at the key responsible — the one whose removal
    (back to its default) lets it build — or at the entry when no single key is."""
    problems: list[Problem] = []

    def at(name: str, where: tuple) -> KeyPath:
        return path + (name, "sweep", where[1]) if where else path + (name,)

    for where, point in spec.each_value():
        refused = _refusal(spec.cls, point, dtype)
        if refused is None:
            continue
        if where:  # the first point builds: this swept value is what it refuses
            name = where[0]
            problems.append(Problem(at(name, where), f"{spec.class_name} refuses {name}={point[name]!r}: {refused}"))
            continue
        culprits = [name for name in point if name in defaults
                    and _refusal(spec.cls, {k: v for k, v in point.items() if k != name}, dtype) is None]
        if not culprits:  # e.g. a hyperparameter without a default: the one the message names, if one is
            named = [name for name in point if _names(refused, name, point[name])]
            culprits = named if len(named) == 1 else []
        if len(culprits) == 1:
            name = culprits[0]
            place = at(name, (name, 0) if name in spec.sweeps else ())
            problems.append(Problem(place, f"{spec.class_name} refuses {name}={point[name]!r}: {refused}"))
        else:
            given = ", ".join(f"{k}={v!r}" for k, v in point.items())
            what = (f"the combination {', '.join(f'{k}={point[k]!r}' for k in culprits)}" if culprits
                    else f"to be built with {given or 'no hyperparameters'}")
            problems.append(Problem(path, f"{spec.class_name} refuses {what}: {refused} (built on a dummy "
                                          f"parameter at validation, as a run builds it, without training)"))
        break  # the first point does not build: each other value would only repeat it
    return problems


# ---------------------------------------------------------------------- expectations


def _check_bound(comparator: str, bound: Any, path: KeyPath, problems: list[Problem]) -> None:
    if isinstance(bound, str) and not _NUMBER_STRING.match(bound.strip()):  # '1e-3': YAML 1.1 text
        if bound not in THEORY_REFERENCES:
            problems.append(Problem(path, _unknown("theory reference", bound, list(THEORY_REFERENCES))))
        return
    if isinstance(bound, dict):
        if set(bound) != {"times", "of"} or bound.get("of") not in THEORY_REFERENCES:
            problems.append(Problem(path, f"a scaled bound is {{of: <{'|'.join(THEORY_REFERENCES)}>, "
                                    f"times: <number>}}, got {bound!r}"))
            return
        problem = _type_problem(bound["times"], float, path + ("times",), finite=True)
        if problem:
            problems.append(problem)
        return
    if comparator == "between":
        if not (isinstance(bound, list) and len(bound) == 2):
            problems.append(Problem(path, f"'between' takes [low, high], got {bound!r}"))
            return
        n = len(problems)
        for i, b in enumerate(bound):
            _check_bound("above", b, path + (i,), problems)
        low, high = bound
        if len(problems) == n and all(_matches(b, float) for b in bound) and low > high:
            problems.append(Problem(path, f"'between' takes [low, high] with low <= high, got {bound!r}"))
        return
    problem = _type_problem(bound, Union[float, bool, None], path)
    if problem:
        problems.append(problem)


def _expectations(expect: Any, optimizers: Mapping[str, Any], path: KeyPath,
                  problems: list[Problem]) -> list[Expectation]:
    out: list[Expectation] = []
    if not isinstance(expect, dict):
        problems.append(Problem(path, f"expect must map optimizer names to metric bounds, got {expect!r}"))
        return out
    for opt_key, metrics in expect.items():
        opt_path = path + (opt_key,)
        if opt_key not in optimizers:
            guess = nearest(str(opt_key), list(optimizers))
            problems.append(Problem(opt_path, f"expectation for unknown optimizer {opt_key!r}"
                                    + (f"; did you mean {guess!r}?" if guess else
                                       f"; the case's optimizers are {', '.join(map(str, optimizers))}"
                                       if optimizers else "; the case declares no optimizers")))
            continue
        if not isinstance(metrics, dict):
            problems.append(Problem(opt_path, f"expected metric: {{comparator: bound}}, got {metrics!r}"))
            continue
        for metric, checks in metrics.items():
            m_path = opt_path + (metric,)
            if metric == PARITY:
                parity = _parity(str(opt_key), checks, optimizers, m_path, problems)
                if parity:
                    out.append(parity)
                continue
            if metric not in METRICS:
                problems.append(Problem(m_path, _unknown("metric", metric, METRICS.names())))
                continue
            if not isinstance(checks, dict) or not checks:
                problems.append(Problem(m_path, f"expected {{comparator: bound}} with a comparator "
                                        f"from {', '.join(COMPARATORS.names())}, got {checks!r}"))
                continue
            for comparator, bound in checks.items():
                c_path = m_path + (comparator,)
                if comparator not in COMPARATORS:
                    problems.append(Problem(c_path, _unknown("comparator", comparator, COMPARATORS.names())))
                    continue
                _check_bound(comparator, bound, c_path, problems)
                out.append(Expectation(opt_key, metric, comparator, bound, c_path))
    return out


# ---------------------------------------------------------------------------- probes
def _check_probes(raw: dict, got: dict, problems: list[Problem]) -> dict:
    """Plan options by type; every other key names a probe whose options are checked
    against the probe function's signature (plus ``every``). Yields the section as written."""
    section, path = raw.get("probes") or {}, ("probes",)
    if not isinstance(section, dict):  # the type check has said so
        return {}
    for key, value in section.items():
        key_path = path + (key,)
        if key in PLAN_OPTIONS:
            problem = _type_problem(value, PLAN_OPTIONS[key], key_path)
            if problem:
                problems.append(problem)
            elif key in ("every", "max_iter", "subset", "chunk_size") and value is not None and value < 1:
                problems.append(Problem(key_path, f"{key} must be at least 1, got {value}"))
            continue
        if isinstance(key, str) and ":" in key:  # a user's probe by import path
            probe = _resolve(PROBES, key, key_path, problems, "probe")
            if probe is not None:
                _check_probe_options(raw, key, value, probe, int, key_path, problems)
            continue
        if key not in PROBES and not (load_entry_points() and key in PROBES):
            guess = nearest(str(key), PROBES.names() + list(PLAN_OPTIONS))
            problems.append(Problem(key_path, f"unknown probe {key!r}"
                                    + (f"; did you mean {guess!r}?" if guess else "")
                                    + f" Probes: {', '.join(PROBES.names())}; options: {', '.join(PLAN_OPTIONS)}."))
            continue
        _check_probe_options(raw, key, value, PROBES.get(key), Count, key_path, problems)
    return section


def _check_probe_options(raw: dict, key: str, value: Any, probe: Any, every: Any, path: KeyPath,
                         problems: list[Problem]) -> None:
    """A probe's options against its function's signature (plus ``every``), and its
    ``optimizers:``: a list of the case's optimizer entries, or a mapping from entry to
    overrides of the same options."""
    args, label = _arguments(probe, skip=1), f"probe {key!r}"
    for name in RESERVED_PROBE_OPTIONS:   # the plan takes these keys: the function would never see them
        if name in args.defaults:
            problems.append(Problem(path, f"{label}: its function takes an option named "
                                          f"{name!r}, which the probes section keeps for itself "
                                          f"({RESERVED_PROBE_OPTIONS[name]}); rename that parameter"))
    hints = {**args.hints, "every": every}
    options = dict(value) if isinstance(value, dict) else ({} if value is None else value)
    chosen = options.pop("optimizers", None) if isinstance(options, dict) else None
    _check_mapping(options, hints, args.required, path, problems, label)
    if chosen is None:
        return
    path = path + ("optimizers",)
    entries = [str(k) for k in raw["optimizers"]] if isinstance(raw.get("optimizers"), dict) else []
    if not isinstance(chosen, (list, dict)) or not chosen:
        problems.append(Problem(path, f"optimizers takes a list of this case's optimizer entries, or a mapping "
                                      f"from entry to its options for this probe (e.g. {{control: {{every: 20}}}}); "
                                      f"got {chosen!r}"))
        return
    for i, name in enumerate(chosen):
        where = path + ((name,) if isinstance(chosen, dict) else (i,))
        if not isinstance(name, str) or name not in entries:
            problems.append(Problem(where, _unknown("optimizer entry", name, entries)))
        elif isinstance(chosen, dict) and chosen[name] is not None:
            if isinstance(chosen[name], dict) and "optimizers" in chosen[name]:
                problems.append(Problem(where + ("optimizers",), "optimizers cannot be nested"))
            else:
                _check_mapping(chosen[name], hints, set(), where, problems, f"{label} for optimizer {name!r}")


def _unprobed_figures(case: "Case") -> list[Problem]:
    """Expectations on a figure computed from probe columns (``reads_probes`` in
    :mod:`stability_bench.metrics`) that none of the probes the expectation's optimizer entry
    takes records (``records`` in :mod:`stability_bench.probes.registry`; a probe's
    ``optimizers:`` narrows who takes it): such a figure would be None at run time and the
    expectation could only fail (``measured None``), so it is an error here, at the metric's
    key, naming the probes to add. A user's probe that does not declare its columns may
    record anything: with one, nothing is refused."""
    problems, seen = [], set()
    for e in case.expectations:
        if e.metric not in METRICS or (e.optimizer, e.metric) in seen:
            continue
        seen.add((e.optimizer, e.metric))
        declared = [getattr(PROBES.get(name), "columns", None) for name in probes_for(case.probes, e.optimizer)]
        if any(columns is None for columns in declared):
            continue
        recorded = {c for columns in declared for c in columns}
        missing = [c for c in probe_columns(e.metric) if c not in recorded]
        if not missing:
            continue
        add = list(dict.fromkeys(p for c in missing for p in probes_recording(c)))
        elsewhere = [p for p in add if p in case.probes]   # declared, but not taken by this entry
        section = ", ".join(f"{p}: {{}}" for p in add if p not in elsewhere)
        where = "; ".join(([f"add {e.optimizer} to the optimizers: of {' and '.join(elsewhere)}"] if elsewhere else [])
                          + ([] if not section else [f"add {section} under probes:" if case.probes else
                                                     f"add a probes: section, e.g. probes: {{every: 10, {section}}}"]))
        problems.append(Problem(e.path[:-1], f"{e.metric} is computed from the probe column"
                                f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}, which "
                                + (f"none of the probes optimizer entry {e.optimizer!r} takes records" if elsewhere
                                   else "no probe of this case records")
                                + f", so it would be None at run time: {where} "
                                f"(the probe{'s' if len(add) > 1 else ''} {' and '.join(add)})"))
    return problems


def _parity(opt_key: str, checks: Any, optimizers: Mapping[str, Any], path: KeyPath,
            problems: list[Problem]) -> Expectation | None:
    """``parity: {with: <optimizer>, rtol: <number>, atol: <number>}``: the partner exists,
    is another optimizer, the tolerances are numbers >= 0, and every run of ``opt_key`` has
    exactly one partner run: each hyperparameter the partner sweeps has, at every point of
    ``opt_key``, one of the partner's values."""
    form = "parity takes {with: <optimizer>, rtol: <number>, atol: <number>}"
    if not isinstance(checks, dict) or "with" not in checks:
        problems.append(Problem(path, f"{form}, got {checks!r}"))
        return None
    n = len(problems)
    for key in checks:
        if key not in PARITY_KEYS:
            problems.append(Problem(path + (key,), _unknown("parity key", key, list(PARITY_KEYS))))
    for key in ("rtol", "atol"):
        if key in checks:
            problem = _type_problem(checks[key], float, path + (key,))
            if problem:
                problems.append(problem)
            elif not 0.0 <= checks[key] < float("inf"):
                problems.append(Problem(path + (key,), f"{key} must be a finite number >= 0, got {checks[key]!r}"))
    partner = checks["with"]
    if partner == opt_key:
        problems.append(Problem(path + ("with",), f"{opt_key!r} cannot be its own parity partner"))
    elif not isinstance(partner, str) or partner not in optimizers:
        others = [str(k) for k in optimizers if k != opt_key]
        problems.append(Problem(path + ("with",), _unknown("parity partner", partner, others) if others else
                                f"unknown parity partner {partner!r}: the case has no optimizer besides "
                                f"{opt_key!r} to compare it with; add the reference under optimizers:"))
    elif isinstance(optimizers.get(opt_key), dict) and isinstance(optimizers[partner], dict):
        mine, theirs = optimizers[opt_key], optimizers[partner]
        for name, value in theirs.items():
            if not (isinstance(value, dict) and isinstance(value.get("sweep"), list)):
                continue
            if name not in mine:
                problems.append(Problem(path + ("with",), f"{partner!r} sweeps {name} over {value['sweep']!r} "
                                        f"but {opt_key!r} sets no {name}, so which run of {partner!r} to "
                                        f"compare with is ambiguous: give {opt_key!r} the same sweep (or one "
                                        f"value of it), or fix {name} in {partner!r}"))
                continue
            own = mine[name].get("sweep") if isinstance(mine[name], dict) else [mine[name]]
            missing = [v for v in own if v not in value["sweep"]] if isinstance(own, list) else []
            if missing:
                problems.append(Problem(path + ("with",), f"sweeps don't line up: {opt_key!r} runs {name}="
                                        f"{', '.join(map(repr, missing))}, which {partner!r} (sweep "
                                        f"{value['sweep']!r}) does not run"))
    if len(problems) > n:
        return None
    return Expectation(opt_key, PARITY, "tracks", dict(checks), path)


# ------------------------------------------------------------ schedule, clipping, eval
def _check_schedule(spec: Any, path: KeyPath, problems: list[Problem]) -> None:
    """``{class: <scheduler>, **arguments}`` (arguments against the class's signature; a
    ``schedulers`` argument holds schedule specs) or the ``{warmup, then, min_factor}``
    shorthand (see :mod:`stability_bench.schedules`)."""
    if not isinstance(spec, dict) or ("class" in spec) == ("warmup" in spec):
        problems.append(Problem(path, "a schedule is {class: torch.optim.lr_scheduler.NAME (or "
                                      "package.module:Class), <its arguments>} or {warmup: N, then: "
                                      f"cosine|linear|constant, min_factor: 0.0}}, got {spec!r}"))
        return
    if "warmup" in spec:
        if _check_mapping(spec, SHORTHAND_KEYS, {"warmup"}, path, problems, "schedule") \
                and isinstance(spec.get("warmup"), int) and spec["warmup"] < 0:
            problems.append(Problem(path + ("warmup",), f"warmup must be >= 0, got {spec['warmup']}"))
        m = spec.get("min_factor", 0.0)
        if _matches(m, float) and not 0.0 <= m <= 1.0:
            problems.append(Problem(path + ("min_factor",), f"min_factor must be in [0, 1], got {m}"))
        return
    try:
        cls = scheduler_class(spec["class"]) if isinstance(spec["class"], str) else None
    except ImportPathError as exc:
        problems.append(Problem(path + ("class",), str(exc)))
        return
    if not isinstance(cls, type):
        problems.append(Problem(path + ("class",), f"expected a scheduler class such as "
                                f"'torch.optim.lr_scheduler.CosineAnnealingLR', got {spec['class']!r}"))
        return
    reason = unsupported_step(cls)
    if reason:
        problems.append(Problem(path + ("class",), reason))
        return
    args = _arguments(cls)
    allowed, required, var_kw = dict(args.hints), args.required, args.var_kw
    allowed.pop("optimizer", None)
    required.discard("optimizer")
    if "schedulers" in allowed:
        allowed["schedulers"] = list
    arguments = {k: v for k, v in spec.items() if k != "class"}
    if var_kw:
        allowed.update({k: Any for k in arguments})
    _check_mapping(arguments, allowed, required, path, problems, spec["class"])
    if isinstance(arguments.get("schedulers"), list):
        for i, inner in enumerate(arguments["schedulers"]):
            _check_schedule(inner, path + ("schedulers", i), problems)


def _check_clip(raw: dict, got: dict, problems: list[Problem]) -> dict | None:
    """``clip_grad_norm`` / ``clip_grad_value``: arguments of torch.nn.utils.clip_grad_norm_ /
    clip_grad_value_ (checked against their signatures); one of the two."""
    import torch

    given = [k for k in ("clip_grad_norm", "clip_grad_value") if raw.get(k) is not None]
    if len(given) > 1:
        problems.append(Problem((given[1],), "a case clips by norm or by value, not both"))
        return None
    if not given:
        return None
    key = given[0]
    fn = torch.nn.utils.clip_grad_norm_ if key == "clip_grad_norm" else torch.nn.utils.clip_grad_value_
    args = _arguments(fn, skip=1)
    allowed, required = args.hints, args.required
    n = len(problems)
    if _check_mapping(raw[key], allowed, required, (key,), problems, key):
        bound = "max_norm" if key == "clip_grad_norm" else "clip_value"
        value = raw[key].get(bound)
        if _matches(value, float) and not value > 0:
            problems.append(Problem((key, bound), f"{bound} must be > 0, got {value}"))
    for opt_key, spec in got["optimizers"].items():
        if spec.cls is not None and "create_graph" in step_contract(spec.cls):
            problems.append(Problem(("optimizers", opt_key, "class"),
                                    f"{spec.class_name} needs create_graph (it differentiates p.grad), and "
                                    f"{key} rewrites p.grad in place, cutting that graph: drop {key}"))
    if len(problems) > n:
        return None
    return {"kind": "norm" if key == "clip_grad_norm" else "value", **raw[key]}


_EVAL_KEYS = {"every": int, "split": Literal["full", "heldout"], "heldout_fraction": float}
EVAL_DEFAULTS = {"split": "full", "heldout_fraction": 0.2}


def _check_eval(raw: dict, got: dict, problems: list[Problem]) -> dict | None:
    """``eval: {every: N, split: full|heldout, heldout_fraction: f}``, defaults filled in."""
    spec = raw.get("eval")
    if spec is None:
        return None
    n = len(problems)
    if not _check_mapping(spec, _EVAL_KEYS, {"every"}, ("eval",), problems, "eval"):
        return None
    if _matches(spec.get("every"), int) and spec["every"] < 1:
        problems.append(Problem(("eval", "every"), f"every must be at least 1, got {spec['every']}"))
    fraction = spec.get("heldout_fraction")
    if fraction is not None and spec.get("split", "full") != "heldout":
        problems.append(Problem(("eval", "heldout_fraction"), "heldout_fraction needs split: heldout"))
    elif _matches(fraction, float) and not 0.0 < fraction < 1.0:
        problems.append(Problem(("eval", "heldout_fraction"), f"heldout_fraction must be in (0, 1), got {fraction}"))
    return None if len(problems) > n else {**EVAL_DEFAULTS, **spec}


# ------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class Section:
    """One section of a case file, validated the one way every section is: ``keys`` are its
    top-level keys with their types (checked for the whole file first);
    ``validate(raw, got, problems)`` checks them — reading the fields the sections before it
    yielded in ``got`` — and returns the value of the :class:`Case` field ``field``."""

    keys: Mapping[str, Any]
    validate: Callable[[dict, dict, list[Problem]], Any]
    field: str | None   # None: the section checks, and yields no field of its own


def _value(key: str, default: Any = None) -> Callable[[dict, dict, list[Problem]], Any]:
    """The validator of a section its type check says all of: its value, or ``default``."""
    return lambda raw, got, problems: raw.get(key, default)


def _check_marker(raw: dict, got: dict, problems: list[Problem]) -> None:
    if MARKER in raw and raw[MARKER] != FORMAT_VERSION and _matches(raw[MARKER], int):
        problems.append(Problem((MARKER,), f"case format version {raw[MARKER]} is not supported: this "
                                f"stability-bench reads '{MARKER}: {FORMAT_VERSION}'"))


def _component(key: str, registry: Registry, default: dict | None = None):
    """The validator of a component section (``model:``, ``data:``, ``loss:``)."""
    def validate(raw: dict, got: dict, problems: list[Problem]) -> dict | None:
        if isinstance(raw.get(key), dict):
            _check_component(raw[key], registry, (key,), problems)
        return raw.get(key, default)
    return validate


def _nonempty(key: str, example: str, default: list):
    """The validator of ``seeds:`` and ``devices:``: no seed or no device means no runs at
    all, which must not pass silently."""
    def validate(raw: dict, got: dict, problems: list[Problem]) -> list:
        if raw.get(key) == []:
            problems.append(Problem((key,), f"{key} is empty, so the case has no runs; give at least one, "
                                            f"e.g. {key}: {example} (the default), or delete the key"))
        values = raw.get(key, default)
        if key == "devices":
            for i, device in enumerate(values if isinstance(values, list) else []):
                if isinstance(device, str) and not _DEVICE.match(device):
                    problems.append(Problem(("devices", i), f"unknown device {device!r}: use cpu, cuda or cuda:N"))
        return list(values) if isinstance(values, list) else None
    return validate


def _check_steps(raw: dict, got: dict, problems: list[Problem]) -> int | None:
    steps = raw.get("steps")
    if _matches(steps, int) and steps < 1:
        problems.append(Problem(("steps",), f"steps must be at least 1, got {steps}"))
    elif _matches(steps, int) and steps > MAX_STEPS:
        problems.append(Problem(("steps",), f"steps must be at most {MAX_STEPS:,} (every step's record "
                                f"is kept in memory and in the results), got {steps:,}"))
    return steps


def _check_timeout(raw: dict, got: dict, problems: list[Problem]) -> float | None:
    timeout = raw.get("timeout")
    if _matches(timeout, float) and not 0 < timeout < math.inf:
        problems.append(Problem(("timeout",), f"timeout is seconds per run, a positive finite number; "
                                f"got {timeout!r}"))
    return float(timeout) if _matches(timeout, float) else None


_BATCH_KEYS = {"size": int, "shuffle": bool, "drop_last": bool}


def _check_batch(raw: dict, got: dict, problems: list[Problem]) -> dict | None:
    """``batch: full`` or ``{size, shuffle, drop_last}``, as ``{size: int | None, shuffle,
    drop_last}`` (size None: the full batch)."""
    batch = raw.get("batch", "full")
    if isinstance(batch, str) and batch != "full":
        problems.append(Problem(("batch",), f"batch is 'full' or {{size: N, shuffle: true, "
                                            f"drop_last: false}}, got {batch!r}"))
        return None
    if batch == "full":
        return {"size": None, "shuffle": False, "drop_last": False}
    if not isinstance(batch, dict):  # the type check said so
        return None
    n = len(problems)
    _check_mapping(batch, _BATCH_KEYS, {"size"}, ("batch",), problems, "batch")
    if isinstance(batch.get("size"), int) and batch["size"] < 1:
        problems.append(Problem(("batch", "size"), "batch size must be at least 1"))
    if len(problems) > n:
        return None
    return {"size": batch["size"], "shuffle": batch.get("shuffle", True), "drop_last": batch.get("drop_last", False)}


_DIVERGENCE_KEYS = {"factor": float, "max_loss": Union[float, None]}


def _check_divergence(raw: dict, got: dict, problems: list[Problem]) -> dict:
    if "divergence" in raw and not _check_mapping(raw["divergence"], _DIVERGENCE_KEYS, set(), ("divergence",),
                                                  problems, "divergence"):
        return None
    return {"factor": 1e10, "max_loss": None, **raw.get("divergence", {})}


_SPIKE_KEYS = typing.get_type_hints(SpikeConfig)


def _check_spikes(raw: dict, got: dict, problems: list[Problem]) -> SpikeConfig | None:
    """``spikes:``: the detector's settings, by type, then by the detector's own rules."""
    spikes, n = raw.get("spikes", {}), len(problems)
    if "spikes" in raw:
        _check_mapping(spikes, _SPIKE_KEYS, set(), ("spikes",), problems, "spikes")
    if len(problems) > n:
        return None
    try:
        return SpikeConfig(**spikes)
    except (TypeError, ValueError) as exc:  # e.g. factor 0.5: no loss is a spike below its median
        problems.append(Problem(("spikes",), str(exc)))
        return None


def _check_optimizers(raw: dict, got: dict, problems: list[Problem]) -> dict[str, OptimizerSpec]:
    optimizers: dict[str, OptimizerSpec] = {}
    if isinstance(raw.get("optimizers"), dict):
        if not raw["optimizers"]:
            problems.append(Problem(("optimizers",), "a case needs at least one optimizer"))
        dtype = raw["dtype"] if raw.get("dtype") in ("float32", "float64") else "float32"
        for key, spec in raw["optimizers"].items():
            parsed = _optimizer_spec(str(key), spec, ("optimizers", key), problems, dtype)
            if parsed:
                optimizers[str(key)] = parsed
    return optimizers


def _check_expect(raw: dict, got: dict, problems: list[Problem]) -> list[Expectation]:
    declared = raw["optimizers"] if isinstance(raw.get("optimizers"), dict) else {}  # else already a problem
    return _expectations(raw.get("expect", {}), declared, ("expect",), problems)


def _check_schedule_section(raw: dict, got: dict, problems: list[Problem]) -> dict | None:
    if raw.get("schedule") is not None:
        _check_schedule(raw["schedule"], ("schedule",), problems)
    return raw.get("schedule")


# ----------------------------------------------------------------------------- case
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")

# Every section of a case file, in the order they are validated (and their problems listed):
# a section may read the fields of those before it (``expect`` and ``clip_grad_*`` read the
# optimizers). Adding a section is one entry here and a Case field.
SECTIONS: tuple[Section, ...] = (
    Section({MARKER: int}, _check_marker, None),
    Section({"model": dict}, _component("model", MODELS), "model"),
    Section({"data": dict}, _component("data", DATA, {"kind": "none"}), "data"),
    Section({"loss": dict}, _component("loss", LOSSES), "loss"),
    Section({}, _check_targets, None),   # the loss against the targets the data gives
    Section({"seeds": list[int]}, _nonempty("seeds", "[0]", [0]), "seeds"),
    Section({"devices": list[str]}, _nonempty("devices", "[cpu]", ["cpu"]), "devices"),
    Section({"steps": int}, _check_steps, "steps"),
    Section({"timeout": float}, _check_timeout, "timeout"),
    Section({"batch": Union[str, dict]}, _check_batch, "batch"),
    Section({"divergence": dict}, _check_divergence, "divergence"),
    Section({"spikes": dict}, _check_spikes, "spikes"),
    Section({"probes": dict}, _check_probes, "probes"),
    Section({"optimizers": dict}, _check_optimizers, "optimizers"),
    Section({"expect": dict}, _check_expect, "expectations"),
    Section({"schedule": Union[dict, None]}, _check_schedule_section, "schedule"),
    Section({"clip_grad_norm": Union[dict, None], "clip_grad_value": Union[dict, None]}, _check_clip, "clip"),
    Section({"eval": Union[dict, None]}, _check_eval, "eval"),
    Section({CRITICAL_LR: Union[dict, None]}, critical_lr_section, "critical_lr"),
    Section({"name": str}, _value("name"), "name"),
    Section({"description": str}, lambda raw, got, problems: str(raw.get("description", "")).strip(), "description"),
    Section({"dtype": Literal["float32", "float64"]}, _value("dtype", "float32"), "dtype"),
    Section({"slow": bool}, lambda raw, got, problems: bool(raw.get("slow", False)), "slow"),
)
# Top-level keys and their types: the sections' keys, and ``variants:`` (see load_cases).
TOP_LEVEL: dict[str, Any] = {**{k: t for section in SECTIONS for k, t in section.keys.items()}, "variants": dict}
REQUIRED = {"name", "model", "loss", "steps", "optimizers"}


def _validate(raw: Any, source: Source) -> Case:
    problems: list[Problem] = []
    if not _check_mapping(raw, TOP_LEVEL, REQUIRED, (), problems, "a case"):
        raise CaseError(source, problems)
    got: dict[str, Any] = {}
    for section in SECTIONS:
        value = section.validate(raw, got, problems)
        if section.field is not None:
            got[section.field] = value
    if problems:
        raise CaseError(source, problems)
    case = Case(**got, source=source, raw=raw)
    problems = theory_problems(case) + _unprobed_figures(case)
    if problems:
        raise CaseError(source, problems)
    return case


def _merge(base: dict, override: dict, replace: frozenset = frozenset({"expect", "schedule"})) -> dict:
    """Deep-merge a variant's overrides into the base case: mappings merge, the rest
    replaces — except ``expect``, which a variant states in full (a variant that changes
    the training usually changes what must hold), and ``schedule``, which a variant
    replaces whole (a cosine's T_max merged into a warmup shorthand means nothing)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key in replace:
            out[key] = copy.deepcopy(value)
            continue
        out[key] = _merge(out[key], value, frozenset()) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def _variant_source(source: Source, variant: str) -> Source:
    """Lines of the merged variant: the base's, overridden by the variant's own keys."""
    prefix = ("variants", variant)
    lines = dict(source.lines)
    lines.update({path[2:]: line for path, line in source.lines.items() if path[:2] == prefix and len(path) > 2})
    return Source(source.file, lines)


def _read(path_or_dict: str | Path | Mapping) -> tuple[Any, Source]:
    if isinstance(path_or_dict, Mapping):
        return copy.deepcopy(dict(path_or_dict)), Source()
    path = Path(path_or_dict)
    if not path.is_file():
        raise CaseError(Source(str(path)), [Problem((), "no such case file")])
    try:
        return read_yaml(path)
    except SourceError as exc:  # each problem keeps its line
        lines = {(): exc.line} if exc.line is not None else {}
        raise CaseError(Source(str(path), lines), exc.problems) from None


def _in_variant(problem: Problem, name: str, source: Source, base: list[Problem]) -> Problem | None:
    """A variant's problem in the file's terms: at ``variants.NAME.key`` where the variant
    writes that key (or a parent of it); else at the base's key, saying which variant made
    it a problem. None for a problem the base case has too (reported once, for the base)."""
    prefix = ("variants", name)
    for depth in range(len(problem.path), 0, -1):
        if prefix + tuple(problem.path[:depth]) in source.lines:
            return Problem(prefix + tuple(problem.path), problem.message)
    if any(p.path == problem.path and p.message == problem.message for p in base):
        return None
    return Problem(problem.path, f"{problem.message} (in variant {name!r})")


def load_cases(path_or_dict: str | Path | Mapping) -> list[Case]:
    """All cases in a file: the base case, then one per entry of ``variants:``
    (named ``base/variant``). Every problem of the base and of every variant is reported
    in one :class:`CaseError`."""
    raw, source = _read(path_or_dict)
    if raw is None:
        raise CaseError(source, [Problem((), "the file is empty (or holds only comments)")])
    if not isinstance(raw, dict):
        raise CaseError(source, [Problem((), f"a case file must hold a mapping of keys (name:, model:, "
                                             f"...), got {type(raw).__name__}")])
    variants = raw.pop("variants", {}) or {}
    if not isinstance(variants, dict):
        raise CaseError(source, [Problem(("variants",), "variants must map names to overrides")])
    problems: list[Problem] = []
    cases: list[Case] = []
    try:
        cases.append(_validate(raw, source))
    except CaseError as exc:
        problems += exc.problems
    base = list(problems)
    for name, override in variants.items():
        if not isinstance(override, dict):
            problems.append(Problem(("variants", name), "a variant must be a mapping of overrides"))
            continue
        merged = _merge(raw, override)
        merged["name"] = f"{raw.get('name')}/{name}"
        try:
            cases.append(_validate(merged, _variant_source(source, name)))
        except CaseError as exc:
            problems += [p for p in (_in_variant(q, name, source, base) for q in exc.problems) if p]
    if problems:
        raise CaseError(source, problems)
    return cases


def load_case(path_or_dict: str | Path | Mapping, variant: str | None = None) -> Case:
    """One case from a YAML file or a dict with the same structure (the base case, or
    ``variant``)."""
    cases = load_cases(path_or_dict)
    if variant is None:
        return cases[0]
    for case in cases[1:]:
        if case.name.rsplit("/", 1)[-1] == variant:
            return case
    names = [c.name.rsplit("/", 1)[-1] for c in cases[1:]]
    raise CaseError(cases[0].source, [Problem(("variants",), f"no variant {variant!r}; variants: {names}")])
