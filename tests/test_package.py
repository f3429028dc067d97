"""Properties of the package as a whole: the plugin loads without torch, and no module
imports (directly or through others, at load time, inside functions or for annotations
only) one that imports it back."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "stability_bench"


def test_loading_the_pytest_plugin_imports_no_torch():
    """Every project's pytest loads the plugin (entry point pytest11): it must stay cheap."""
    code = ("import sys, stability_bench.pytest_plugin, stability_bench.yamlsource; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Package modules ``path`` imports anywhere: at module level, inside functions and
    under ``if TYPE_CHECKING:`` alike (an import kept for annotations is still a
    dependency; hiding a cycle there is the dodge this test refuses)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] == "stability_bench"}


def test_imports_under_type_checking_and_in_functions_count(tmp_path):
    module = tmp_path / "stability_bench" / "m.py"
    module.parent.mkdir()
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from stability_bench.a import A\n"
                      "def f():\n    from stability_bench import b\n    import stability_bench.c\n")
    assert {"stability_bench.a", "stability_bench.b", "stability_bench.c"} <= _imports(module, "stability_bench.m")


def _graph() -> dict[str, set[str]]:
    """Module → the package modules it imports. ``from pkg import submodule`` is an edge to
    the submodule only (the package itself is already being imported by then)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = {m for m in _imports(path, name) if m in modules and m != name}
        graph[name] = {m for m in found if not any(o.startswith(m + ".") for o in found)}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt == "stability_bench" or node == "stability_bench":  # the lazy-export root
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    assert _cycle(_graph()) is None
