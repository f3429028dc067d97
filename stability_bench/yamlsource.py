"""Read YAML while remembering the line of every key, so errors can name file:line.

PyYAML's composed node tree carries marks; we build plain Python objects from it and a
``{key path: line}`` table beside them (tavern and pytest's YAML example do the same).

Case files may come from anywhere, so reading is bounded: a size limit checked before
parsing, a nesting-depth limit (deep nesting would otherwise end in RecursionError), and a
limit on the number of values the file expands to (a "billion laughs" alias bomb is a few
hundred bytes). Floats follow YAML 1.2 (``1e-3`` is a number, not text). This module must
not import torch: the pytest plugin calls :func:`has_case_marker` on every YAML file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple  # e.g. ("optimizers", "adam", "lr")

# 256 KiB: the shipped cases are 1–4 KB, and PyYAML's pure-Python parser reads dense YAML
# at ~150 KB/s here, so this bounds a parse to about 2 s (1 MiB took 7 s).
MAX_BYTES = 256 * 2**10
MAX_DEPTH = 64           # nesting levels; a case needs about 6
MAX_VALUES = 100_000     # values after alias expansion; the largest shipped case has ~300
MARKER = "stability-bench"
MARKER_SCAN_BYTES = 64 * 2**10
_MARKER_LINE = re.compile(rb"^(?:" + MARKER.encode() + rb"|'" + MARKER.encode() + rb"'|\""
                          + MARKER.encode() + rb"\")[ \t]*:", re.M)


class SourceError(ValueError):
    """The file cannot be read as a case's YAML; names file and (where known) line and key
    path. ``more`` holds further problems of the same read (each duplicate key, each
    disallowed tag), as :class:`Problem` with their own lines."""

    def __init__(self, file: str, line: int | None, message: str, path: KeyPath = (),
                 more: list["Problem"] | None = None):
        self.file, self.line, self.message, self.path = file, line, message, tuple(path)
        self.more = list(more or [])
        super().__init__(f"{file}:{line}: {message}" if line is not None else f"{file}: {message}")

    @property
    def problems(self) -> list["Problem"]:
        """Every problem found, this one first, each with its line."""
        return [Problem(self.path, self.message, self.line), *self.more]


@dataclass
class Problem:
    """One thing wrong with a case: the key path it is about, and what is wrong; ``line``
    where it is not the line of the key path (a duplicate key's second occurrence)."""

    path: KeyPath
    message: str
    line: int | None = None


def dotted(path: KeyPath) -> str:
    """``optimizers.adam.betas[0]``: a key path as messages write it."""
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")


@dataclass
class Source:
    """Where a case came from: a file (with key lines) or a Python dict (no lines)."""

    file: str | None = None
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line(self, path: KeyPath) -> int | None:
        """The line of ``path`` or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)

    def where(self, path: KeyPath = ()) -> str:
        """``file:line`` for messages (``<dict>`` when the case came from Python)."""
        name = self.file or "<dict>"
        line = self.line(path)
        return f"{name}:{line}" if line is not None else name


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats and a nesting limit while composing."""

    def __init__(self, text: str, file: str):
        super().__init__(text)
        self.file, self.depth = file, 0

    def compose_node(self, parent, index):  # the composer recurses once per nesting level
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise SourceError(self.file, mark.line + 1,
                                  f"nested more than {MAX_DEPTH} levels deep (a case needs about 6)")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


# YAML 1.2 core schema: an exponent makes a number even without a dot (1e-3, 1E5, -2e-7),
# and its sign is optional (1.0e5). PyYAML's YAML 1.1 rules read both as text.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


_PLAIN_COLLECTIONS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class _Builder:
    """Plain objects and the line table from a node tree, counting every value built
    (an alias is counted each time it is used: that is what expansion costs)."""

    def __init__(self, loader: _Loader, file: str):
        self.loader, self.file, self.count = loader, file, 0
        self.lines: dict[KeyPath, int] = {}
        self.problems: list[Problem] = []   # reported together after the whole file is read
        self.shadow = 0   # > 0 while reading a duplicate key's value: its problems count, its lines do not

    def fail(self, node: yaml.Node, message: str, path: KeyPath) -> SourceError:
        return SourceError(self.file, node.start_mark.line + 1, message, path)

    def note(self, node: yaml.Node, message: str, path: KeyPath) -> None:
        """A problem that does not stop the reading (every one of them is reported)."""
        self.problems.append(Problem(tuple(path), message, node.start_mark.line + 1))

    def error(self) -> SourceError | None:
        """The problems noted while reading, as one error (None if there were none)."""
        if not self.problems:
            return None
        first, *more = self.problems
        return SourceError(self.file, first.line, first.message, first.path, more)

    def disallowed(self, node: yaml.Node) -> bool:
        """A tag a case file may not use: any but YAML's plain types (a Python object, a
        local ``!tag``)."""
        if isinstance(node, yaml.ScalarNode):
            return node.tag not in self.loader.yaml_constructors
        return node.tag not in _PLAIN_COLLECTIONS

    def scalar(self, node: yaml.Node, path: KeyPath) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise self.fail(node, f"not valid YAML: {exc.problem}", path) from None
        except Exception as exc:  # e.g. !!int abc, a date like 2024-13-45
            raise self.fail(node, f"cannot read {node.value!r} as {node.tag.rsplit(':', 1)[-1]}: {exc}",
                            path) from None

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:  # named at the top-level key being expanded
            line = self.lines.get(path[:1]) or node.start_mark.line + 1
            raise SourceError(self.file, line, f"expands to more than {MAX_VALUES:,} values (aliases "
                              f"counted each time they are used); a case has a few hundred", path[:1])
        if not self.shadow:
            self.lines.setdefault(path, node.start_mark.line + 1)
        if self.disallowed(node):  # noted, and read as null: the rest of the file is still checked
            self.note(node, f"the tag {node.tag!r} is not allowed in a case file", path)
            return None
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # expanding merges is another bomb
                    raise self.fail(key_node, "merge keys (<<) are not supported; a case file "
                                              "states shared settings once and uses variants:", path)
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.fail(key_node, "a key must be a plain name, not a list or mapping", path)
                if self.disallowed(key_node):
                    self.note(key_node, f"the tag {key_node.tag!r} is not allowed in a case file", path)
                    continue
                key = self.scalar(key_node, path)
                child = path + (key,)
                if key in out:  # noted (each one), and the first value kept; the duplicate is still read
                    self.note(key_node, f"duplicate key {key!r} in {'.'.join(map(str, path)) or 'the top level'}"
                                        f" (first at line {self.lines.get(child, '?')})", child)
                    self.shadow += 1
                    try:
                        self.build(value_node, child)
                    finally:
                        self.shadow -= 1
                    continue
                if not self.shadow:
                    self.lines[child] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        return self.scalar(node, path)


def _decode(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SourceError(file, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line})") from None


def _read_bytes(path: Path) -> bytes:
    file = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SourceError(file, None, f"{size:,} bytes is over the {MAX_BYTES // 2**10} KiB limit "
                                          f"for a case file (a case is a few KB)")
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)  # the file may grow after stat
    except OSError as exc:
        raise SourceError(file, None, f"cannot read the file: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise SourceError(file, None, f"over the {MAX_BYTES // 2**10} KiB limit for a case file")
    return data


def read_yaml(path: str | Path) -> tuple[Any, Source]:
    """Parse ``path``; return the data and a :class:`Source` with the line of each key.
    Every failure is a :class:`SourceError` naming the file and, where known, the line."""
    path = Path(path)
    file = str(path)
    text = _decode(_read_bytes(path), file)
    try:
        loader = _Loader(text, file)
    except yaml.reader.ReaderError as exc:  # a control character PyYAML refuses
        line = text.count("\n", 0, exc.position) + 1
        raise SourceError(file, line, f"not valid YAML: character {chr(exc.character)!r} is not "
                                      f"allowed in YAML text") from None
    try:
        node = loader.get_single_node()
        builder = _Builder(loader, file)
        data = builder.build(node, ()) if node is not None else None
        error = builder.error()
        if error is not None:
            raise error
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        context = (f" ({exc.context} at line {exc.context_mark.line + 1})"  # where the construct began
                   if exc.context and exc.context_mark is not None and exc.context_mark is not mark else "")
        raise SourceError(file, mark.line + 1 if mark is not None else None,
                          f"not valid YAML: {exc.problem or exc}{context}") from None
    finally:
        loader.dispose()
    return data, Source(file, builder.lines if node is not None else {})


_TOP_LEVEL_KEY = re.compile(rb"^['\"]?([A-Za-z][A-Za-z0-9 _.-]*?)['\"]?[ \t]*:", re.M)


def unmarked_reason(path: str | Path) -> tuple[int | None, str]:
    """Why a YAML file in a cases folder is not read as a case, and how to mark it: (line or
    None, one sentence) for the warning that lists it (the CLI's folder commands, pytest
    collection). A line is given only for a top-level key that looks like a misspelt marker
    (``stability_bench: 1``): the file was meant to be a case."""
    try:
        with open(path, "rb") as f:
            head = f.read(MARKER_SCAN_BYTES)
    except OSError as exc:
        return None, f"not read as a case: cannot read it ({exc.strerror or exc})"
    import difflib

    for match in _TOP_LEVEL_KEY.finditer(head):
        key = match.group(1).decode("ascii")
        if key != MARKER and difflib.SequenceMatcher(None, key.lower(), MARKER).ratio() >= 0.8:
            return (head.count(b"\n", 0, match.start()) + 1,
                    f"not read as a case: the key {key!r} is not the marker; write '{MARKER}: 1' "
                    f"(a hyphen, lower case)")
    return None, (f"not read as a case: no '{MARKER}: 1' line at the top level; if it is a case, make "
                  f"its first line '{MARKER}: 1', if not, move it out of the cases folder")


def has_case_marker(path: str | Path) -> bool:
    """Whether ``path`` looks like a stability-bench case: a top-level ``stability-bench:``
    line within its first 64 KiB. Cheap (no YAML parse, no torch), for deciding what to
    collect; validation checks the marker's value."""
    try:
        with open(path, "rb") as f:
            head = f.read(MARKER_SCAN_BYTES)
    except OSError:
        return False
    return _MARKER_LINE.search(head) is not None
