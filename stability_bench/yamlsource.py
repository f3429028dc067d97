"""Read YAML while remembering the line of every key, so errors can name file:line.

PyYAML's composed node tree carries marks; we build plain Python objects from it and a
``{key path: line}`` table beside them (tavern and pytest's YAML example do the same).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple  # e.g. ("optimizers", "adam", "lr")


class SourceError(ValueError):
    """The file is not valid YAML or has duplicate keys; names file and line."""


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


def _build(node: yaml.Node, loader: yaml.SafeLoader, path: KeyPath, lines: dict, file: str):
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                raise SourceError(f"{file}:{key_node.start_mark.line + 1}: duplicate key {key!r}"
                                  f" in {'.'.join(map(str, path)) or 'the top level'}")
            child = path + (key,)
            lines[child] = key_node.start_mark.line + 1
            out[key] = _build(value_node, loader, child, lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, loader, path + (i,), lines, file) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def read_yaml(path: str | Path) -> tuple[Any, Source]:
    """Parse ``path``; return the data and a :class:`Source` with the line of each key."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[KeyPath, int] = {}
        data = _build(node, loader, (), lines, str(path)) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        context = (f" ({exc.context} at line {exc.context_mark.line + 1})"  # where the construct began
                   if exc.context and exc.context_mark is not None and exc.context_mark is not mark else "")
        raise SourceError(f"{path}{line}: not valid YAML: {exc.problem or exc}{context}") from None
    finally:
        loader.dispose()
    return data, Source(str(path), lines)
