"""Imports flow one way: no cycle among miniray's modules, lazy imports
(inside functions) included, and ``import miniray`` stays light.

The graph is read from the source (ast), not from ``sys.modules``, so an
import inside a function that runs only on some path counts as much as one
at the top of a module.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import miniray

PKG_DIR = Path(miniray.__file__).parent
ROOT = "miniray"

# Daemon-side modules (and ``miniray._node*``): the node process must not
# pull in the client runtime.
DAEMON = {"miniray._object_table", "miniray._scheduler", "miniray._protocol",
          "miniray._task_spec", "miniray._task_kind", "miniray._transport"}
CLIENT = {"miniray._runtime", "miniray._core", "miniray._submit", "miniray.api",
          "miniray.actor", "miniray.remote_function", "miniray.util", "miniray.cli",
          "miniray._worker_main", "miniray._client_gate", "miniray._client_reader"}


def _module_files() -> dict:
    mods = {}
    for path in PKG_DIR.rglob("*.py"):
        parts = list(path.relative_to(PKG_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def imports_of(name: str, source: str, modules, *, is_package=False) -> set:
    """miniray modules that ``source`` (module ``name``) imports, anywhere in it."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()

    def add(target):
        # The deepest existing module, and its parent packages (importing it
        # imports them) except the root: every submodule implies the root,
        # the facade at the top, so it counts only when imported by itself
        # (``import miniray``, ``from miniray import get``).
        while target not in modules:
            target = target.rpartition(".")[0]
        if target == ROOT:
            found.add(ROOT)
        while target != ROOT:
            if target != name:
                found.add(target)
            target = target.rpartition(".")[0]

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if base != ROOT and not base.startswith(ROOT + "."):
                continue
            for alias in node.names:
                # ``from . import x``: the submodule x if there is one, else
                # an attribute of the package (then the package is imported).
                sub = f"{base}.{alias.name}"
                add(sub if sub in modules else base)
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id == "__import__"))):
            target = node.args[0].value
            if target == ROOT or target.startswith(ROOT + "."):
                add(target)
    return found


def import_graph() -> dict:
    modules = _module_files()
    return {name: imports_of(name, path.read_text(), modules,
                             is_package=path.name == "__init__.py")
            for name, path in modules.items()}


def find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(graph, WHITE)
    stack = []

    def visit(node):
        color[node] = GREY
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if color.get(nxt, BLACK) == GREY:
                return stack[stack.index(nxt):] + [nxt]
            if color.get(nxt) == WHITE:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        color[node] = BLACK
        return None

    for node in sorted(graph):
        if color[node] == WHITE:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def reachable(graph, start) -> set:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_parser_sees_lazy_relative_and_package_imports():
    modules = {"miniray", "miniray.a", "miniray.b", "miniray.c", "miniray.sub",
               "miniray.sub.d"}
    src = textwrap.dedent("""
        from . import a
        from .b import thing
        import json

        def later():
            from .sub.d import x
            from .. import nothing_above_root
            import importlib
            importlib.import_module("miniray.c")
    """)
    assert imports_of("miniray.x", src, modules) == {
        "miniray.a", "miniray.b", "miniray.c", "miniray.sub", "miniray.sub.d"}
    assert imports_of("miniray.sub.d", "from .. import api_name\nfrom ..a import y\n",
                      modules) == {"miniray", "miniray.a"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_miniray_modules():
    graph = import_graph()
    assert "miniray._runtime" in graph and "miniray.api" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layers():
    graph = import_graph()
    # The runtime and the task builder sit below the public handles.
    for low in ("miniray._runtime", "miniray._submit", "miniray._core"):
        above = reachable(graph, low) & {"miniray.api", "miniray.actor",
                                         "miniray.remote_function", "miniray"}
        assert not above, f"{low} imports up into {sorted(above)}"
    # The daemons never load the client runtime (nor, through it, user code paths).
    for daemon in DAEMON | {m for m in graph if m.startswith("miniray._node")}:
        bad = reachable(graph, daemon) & CLIENT
        assert not bad, f"{daemon} imports client modules {sorted(bad)}"
    # The bottom: ids, errors and the wire formats import (almost) nothing.
    assert graph["miniray.exceptions"] == set()
    assert graph["miniray._task_spec"] == set()
    assert graph["miniray._protocol"] == set()
    assert graph["miniray._ids"] <= {"miniray.exceptions"}


def test_import_miniray_stays_light():
    # cloudpickle is imported by _serialization at import time today (its
    # pickler subclasses cloudpickle's), so it is not in this list.
    code = textwrap.dedent("""
        import sys, threading
        import miniray
        heavy = [m for m in ("numpy", "pyarrow", "pandas", "psutil") if m in sys.modules]
        print(heavy, threading.active_count())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["[]", "1"], out.stdout + out.stderr
