"""The case format: load a YAML file (or a dict), validate it, and expand it into cases.

Validation is derived, not hand-written per key: component parameters are checked against
their factory's signature, optimizer hyperparameters against the optimizer's ``__init__``,
metrics and comparators against their registries. Every problem is reported as
``file:line: key.path: what is wrong (and the nearest valid choice)``.
"""
from __future__ import annotations

import copy
import inspect
import itertools
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Union

from stability_bench.components.data import DATA
from stability_bench.critical_lr import section_problems as critical_lr_problems
from stability_bench.components.losses import LOSSES
from stability_bench.components.models import MODELS
from stability_bench.expectations import COMPARATORS, PARITY, PARITY_KEYS, THEORY_REFERENCES
from stability_bench.metrics import METRICS, SpikeConfig
from stability_bench.optimizers.resolve import OptimizerResolveError, resolve_optimizer_class
from stability_bench.registry import Registry, nearest
from stability_bench.yamlsource import KeyPath, Source, SourceError, read_yaml

_NUMBER_STRING = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass
class Problem:
    path: KeyPath
    message: str


class CaseError(ValueError):
    """A malformed case: one paragraph per problem, each naming file, line and key path."""

    def __init__(self, source: Source, problems: list[Problem]):
        self.source, self.problems = source, problems
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(
            f"{self.source.where(p.path)}: {_dotted(p.path) or '(case)'}: {p.message}"
            for p in self.problems)


def _unknown(what: str, name: Any, known: list[str]) -> str:
    """``unknown metric 'x'; did you mean 'y'? Known: ...`` for any registry-like name."""
    guess = nearest(str(name), known)
    return (f"unknown {what} {name!r}" + (f"; did you mean {guess!r}?" if guess else "")
            + f" Known: {', '.join(known)}.")


def _dotted(path: KeyPath) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")


# --------------------------------------------------------------------------- types
def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin is Union or (origin is not None and origin.__name__ == "UnionType"):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return f"a list of {_type_name(args[0])}" if args else "a list"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))


def _matches(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a type hint (ints count as floats; bools are not numbers)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin is Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value) \
            if args else isinstance(value, (list, tuple))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_problem(value: Any, hint: Any, path: KeyPath) -> Problem | None:
    if _matches(value, hint):
        return None
    message = f"expected {_type_name(hint)}, got {value!r}"
    if isinstance(value, str) and _NUMBER_STRING.match(value.strip()):
        message += (f" — a string: YAML 1.1 reads a number like {value!r} without a dot in its "
                    f"mantissa as text; write {_yaml_float(value)}")
    return Problem(path, message)


def _yaml_float(text: str) -> str:
    mantissa, _, exponent = text.lower().partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}e{exponent}" if exponent else mantissa


def _check_mapping(value: Any, allowed: Mapping[str, Any], required: set[str], path: KeyPath,
                   problems: list[Problem], what: str) -> bool:
    """Keys of a mapping against ``allowed`` (name → type hint); returns False if not a mapping."""
    if not isinstance(value, dict):
        problems.append(Problem(path, f"{what} must be a mapping, got {value!r}"))
        return False
    for key in value:
        if key not in allowed:
            guess = nearest(str(key), list(allowed))
            hint = f"; did you mean {guess!r}?" if guess else f"; valid keys: {', '.join(allowed)}"
            problems.append(Problem(path + (key,), f"unknown key {key!r} in {what}{hint}"))
        else:
            problem = _type_problem(value[key], allowed[key], path + (key,))
            if problem:
                problems.append(problem)
    for key in sorted(required - set(value)):
        problems.append(Problem(path, f"{what} is missing the required key {key!r}"))
    return True


# ----------------------------------------------------------------------- components
def _signature_params(factory: Any, skip: int) -> tuple[dict[str, Any], set[str], bool]:
    """(name → hint, required names, accepts **kwargs) of a factory, skipping leading args."""
    sig = inspect.signature(factory)
    try:
        hints = typing.get_type_hints(factory)
    except Exception:
        hints = {}
    params = list(sig.parameters.values())[skip:]
    allowed, required, var_kw = {}, set(), False
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind is not p.VAR_POSITIONAL:
            allowed[p.name] = hints.get(p.name, Any)
            if p.default is p.empty:
                required.add(p.name)
    return allowed, required, var_kw


def _check_component(spec: Any, registry: Registry, path: KeyPath, problems: list[Problem]) -> None:
    if not isinstance(spec, dict) or "kind" not in spec:
        problems.append(Problem(path, f"expected a mapping with a 'kind' (one of "
                                      f"{', '.join(registry.names())}), got {spec!r}"))
        return
    kind = spec["kind"]
    if kind not in registry:
        problems.append(Problem(path + ("kind",), _unknown(f"{registry.kind} kind", kind, registry.names())))
        return
    allowed, required, _ = _signature_params(registry.get(kind), skip=1)
    params = {k: v for k, v in spec.items() if k != "kind"}
    _check_mapping(params, allowed, required, path, problems, f"{registry.kind} {kind!r}")


# ----------------------------------------------------------------------- optimizers
@dataclass
class OptimizerSpec:
    """One entry of ``optimizers:``; sweeps expand into :meth:`points`."""

    key: str
    class_name: str
    cls: type
    fixed: dict[str, Any]
    sweeps: dict[str, list[Any]]

    def points(self) -> list[dict[str, Any]]:
        """Every hyperparameter combination (the Cartesian product of the sweeps)."""
        names = list(self.sweeps)
        return [{**self.fixed, **dict(zip(names, combo))}
                for combo in itertools.product(*(self.sweeps[n] for n in names))]

    def label(self, point: Mapping[str, Any]) -> str:
        """``lr=38.1`` — the swept values of a point, used in run ids."""
        return ",".join(f"{k}={point[k]:g}" if isinstance(point[k], float) else f"{k}={point[k]}"
                        for k in self.sweeps)


def _coerce(value: Any, default: Any) -> Any:
    """YAML lists become tuples where the optimizer's default is a tuple (``betas``)."""
    return tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value


def _check_hparam(name: str, value: Any, default: Any, path: KeyPath, problems: list[Problem]) -> None:
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            problem = _type_problem(v, float, path)
            if problem:
                problems.append(problem)
                return


def _optimizer_spec(key: str, spec: Any, path: KeyPath, problems: list[Problem]) -> OptimizerSpec | None:
    if not isinstance(spec, dict) or "class" not in spec:
        problems.append(Problem(path, f"optimizer {key!r} must be a mapping with a 'class' "
                                      f"(e.g. torch.optim.Adam), got {spec!r}"))
        return None
    try:
        cls = resolve_optimizer_class(spec["class"])
    except OptimizerResolveError as exc:
        problems.append(Problem(path + ("class",), str(exc)))
        return None
    signature = inspect.signature(cls.__init__)
    accepted = {n: p.default for n, p in list(signature.parameters.items())[2:]
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    try:  # a required hyperparameter has no default to type-check against: use its annotation
        hints = typing.get_type_hints(cls.__init__)
    except Exception:
        hints = {}
    for name in [n for n, d in accepted.items() if d is inspect.Parameter.empty]:
        if hints.get(name) in (int, float):
            accepted[name] = hints[name]()
        if name not in spec and not nearest(name, [k for k in spec if k not in accepted]):  # not a typo'd key
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
        default = accepted.get(name)
        if isinstance(value, dict):
            if set(value) != {"sweep"}:
                problems.append(Problem(hp_path, f"a hyperparameter mapping must be "
                                        f"{{sweep: [v1, v2, ...]}}, got keys {sorted(value)}"))
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
                _check_hparam(name, point, default, hp_path + ("sweep", i), problems)
            if len(set(map(repr, points))) != len(points):
                problems.append(Problem(hp_path + ("sweep",), f"sweep repeats a value: {points!r}"))
            sweeps[name] = [_coerce(p, default) for p in points]
        else:
            _check_hparam(name, value, default, hp_path, problems)
            fixed[name] = _coerce(value, default)
    return OptimizerSpec(key, spec["class"], cls, fixed, sweeps)


# ---------------------------------------------------------------------- expectations
@dataclass(frozen=True)
class Expectation:
    """``expect.<optimizer>.<metric>.<comparator>: <bound>`` at ``path`` in the case file."""

    optimizer: str
    metric: str
    comparator: str
    bound: Any
    path: KeyPath


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
    if comparator == "between":
        if not (isinstance(bound, list) and len(bound) == 2):
            problems.append(Problem(path, f"'between' takes [low, high], got {bound!r}"))
            return
        for i, b in enumerate(bound):
            _check_bound("above", b, path + (i,), problems)
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
                                       f"; the case's optimizers are {', '.join(optimizers)}")))
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
def _check_probes(section: dict, path: KeyPath, problems: list[Problem]) -> None:
    """Plan options by type; every other key names a probe whose options are checked
    against the probe function's signature (plus ``every``)."""
    from stability_bench.probes.registry import PLAN_OPTIONS, PROBES

    for key, value in section.items():
        key_path = path + (key,)
        if key in PLAN_OPTIONS:
            problem = _type_problem(value, PLAN_OPTIONS[key], key_path)
            if problem:
                problems.append(problem)
            elif key in ("every", "max_iter", "subset", "chunk_size") and value is not None and value < 1:
                problems.append(Problem(key_path, f"{key} must be at least 1, got {value}"))
            continue
        if key not in PROBES:
            guess = nearest(str(key), PROBES.names() + list(PLAN_OPTIONS))
            problems.append(Problem(key_path, f"unknown probe {key!r}"
                                    + (f"; did you mean {guess!r}?" if guess else "")
                                    + f" Probes: {', '.join(PROBES.names())}; options: {', '.join(PLAN_OPTIONS)}."))
            continue
        allowed, required, _ = _signature_params(PROBES.get(key), skip=1)
        _check_mapping(value if value is not None else {}, {**allowed, "every": int}, required,
                       key_path, problems, f"probe {key!r}")


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
        problems.append(Problem(path + ("with",), _unknown("parity partner", partner, others)))
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


# ----------------------------------------------------------------------------- case
BatchSpec = Union[Literal["full"], dict]
_BATCH_KEYS = {"size": int, "shuffle": bool, "drop_last": bool}
_DIVERGENCE_KEYS = {"factor": float, "max_loss": Union[float, None]}
_SPIKE_KEYS = typing.get_type_hints(SpikeConfig)

# Top-level keys and their types; the component sections are checked against registries.
TOP_LEVEL: dict[str, Any] = {
    "name": str, "description": str, "seeds": list[int], "devices": list[str],
    "dtype": Literal["float32", "float64"], "model": dict, "data": dict, "loss": dict,
    "batch": Union[str, dict], "steps": int, "optimizers": dict, "expect": dict,
    "divergence": dict, "spikes": dict, "slow": bool, "variants": dict, "probes": dict,
    "critical_lr": Union[dict, None],   # see stability_bench.critical_lr
}
REQUIRED = {"name", "model", "loss", "steps", "optimizers"}
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


@dataclass
class Case:
    """A validated case: what to train, how, for how long, and what must hold."""

    name: str
    description: str
    seeds: list[int]
    devices: list[str]
    dtype: str
    model: dict
    data: dict
    loss: dict
    batch: dict                      # {size: int | None, shuffle, drop_last}; size None = full
    steps: int
    optimizers: dict[str, OptimizerSpec]
    expectations: list[Expectation]
    divergence: dict
    spikes: SpikeConfig
    slow: bool
    source: Source = field(repr=False)
    raw: dict = field(repr=False)    # the case as written (variant merged), for reports/triage
    probes: dict = field(default_factory=dict)  # the ``probes:`` section as written (validated)

    def where(self, path: KeyPath = ()) -> str:
        return self.source.where(path)


def _validate(raw: Any, source: Source) -> Case:
    problems: list[Problem] = []
    if not _check_mapping(raw, TOP_LEVEL, REQUIRED, (), problems, "a case"):
        raise CaseError(source, problems)
    for key, registry in (("model", MODELS), ("data", DATA), ("loss", LOSSES)):
        if isinstance(raw.get(key), dict):
            _check_component(raw[key], registry, (key,), problems)
    for i, device in enumerate(raw.get("devices", [])):
        if isinstance(device, str) and not _DEVICE.match(device):
            problems.append(Problem(("devices", i), f"unknown device {device!r}: use cpu, cuda or cuda:N"))
    if isinstance(raw.get("steps"), int) and raw["steps"] < 1:
        problems.append(Problem(("steps",), f"steps must be at least 1, got {raw['steps']}"))
    batch = raw.get("batch", "full")
    if isinstance(batch, str) and batch != "full":
        problems.append(Problem(("batch",), f"batch is 'full' or {{size: N, shuffle: true, "
                                            f"drop_last: false}}, got {batch!r}"))
    elif isinstance(batch, dict):
        _check_mapping(batch, _BATCH_KEYS, {"size"}, ("batch",), problems, "batch")
        if isinstance(batch.get("size"), int) and batch["size"] < 1:
            problems.append(Problem(("batch", "size"), "batch size must be at least 1"))
    for key, allowed in (("divergence", _DIVERGENCE_KEYS), ("spikes", _SPIKE_KEYS)):
        if key in raw:
            _check_mapping(raw[key], allowed, set(), (key,), problems, key)
    if isinstance(raw.get("probes"), dict):
        _check_probes(raw["probes"], ("probes",), problems)
    optimizers: dict[str, OptimizerSpec] = {}
    if isinstance(raw.get("optimizers"), dict):
        if not raw["optimizers"]:
            problems.append(Problem(("optimizers",), "a case needs at least one optimizer"))
        for key, spec in raw["optimizers"].items():
            parsed = _optimizer_spec(str(key), spec, ("optimizers", key), problems)
            if parsed:
                optimizers[str(key)] = parsed
    expectations = _expectations(raw.get("expect", {}), raw.get("optimizers") or {}, ("expect",), problems)
    problems += critical_lr_problems(raw.get("critical_lr"), optimizers)
    if problems:
        raise CaseError(source, problems)
    batch_spec = ({"size": None, "shuffle": False, "drop_last": False} if batch == "full" else
                  {"size": batch["size"], "shuffle": batch.get("shuffle", True),
                   "drop_last": batch.get("drop_last", False)})
    return Case(
        name=raw["name"], description=raw.get("description", "").strip(),
        seeds=list(raw.get("seeds", [0])), devices=list(raw.get("devices", ["cpu"])),
        dtype=raw.get("dtype", "float32"), model=raw["model"],
        data=raw.get("data", {"kind": "none"}), loss=raw["loss"], batch=batch_spec,
        steps=raw["steps"], optimizers=optimizers, expectations=expectations,
        divergence={"factor": 1e10, "max_loss": None, **raw.get("divergence", {})},
        spikes=SpikeConfig(**raw.get("spikes", {})), slow=bool(raw.get("slow", False)),
        source=source, raw=raw, probes=raw.get("probes") or {})


def _merge(base: dict, override: dict, replace: frozenset = frozenset({"expect"})) -> dict:
    """Deep-merge a variant's overrides into the base case: mappings merge, the rest
    replaces — except ``expect``, which a variant states in full (a variant that changes
    the training usually changes what must hold)."""
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
    except SourceError as exc:  # "file:line: message" — keep the line for Source.where
        found = re.match(r":(\d+): (.*)", str(exc)[len(str(path)):], re.S)
        lines, message = ({(): int(found[1])}, found[2]) if found else ({}, str(exc).split(": ", 1)[-1])
        raise CaseError(Source(str(path), lines), [Problem((), message)]) from None


def load_cases(path_or_dict: str | Path | Mapping) -> list[Case]:
    """All cases in a file: the base case, then one per entry of ``variants:``
    (named ``base/variant``)."""
    raw, source = _read(path_or_dict)
    if not isinstance(raw, dict):
        raise CaseError(source, [Problem((), f"a case file must hold a mapping, got {type(raw).__name__}")])
    variants = raw.pop("variants", {}) or {}
    if not isinstance(variants, dict):
        raise CaseError(source, [Problem(("variants",), "variants must map names to overrides")])
    cases = [_validate(raw, source)]
    for name, override in variants.items():
        if not isinstance(override, dict):
            raise CaseError(source, [Problem(("variants", name), "a variant must be a mapping of overrides")])
        merged = _merge(raw, override)
        merged["name"] = f"{raw['name']}/{name}"
        cases.append(_validate(merged, _variant_source(source, name)))
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
