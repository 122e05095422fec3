"""The shape of the house: imports flow one way, the pipeline never runs the CLI, every command
is in the stage registry, and `import dlpipe` stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import typer

from dlpipe.cli import app
from dlpipe.stages import STAGES

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for f in (SRC / "dlpipe").rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module -> the dlpipe modules it imports anywhere (top level or inside functions)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, (path, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                if node.level:
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names]
                targets = [s if s in mods else target for s in subs]
            else:
                continue
            for t in targets:
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t.startswith("dlpipe"):
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_inside_the_package():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():  # the negative case: a->b->a is reported
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_library_layers_never_import_the_cli():
    graph = import_graph()
    below_cli = [m for m in graph if not m.startswith("dlpipe.cli") and m != "dlpipe.__main__"]
    offenders = {m: sorted(t for t in graph[m] if t.startswith("dlpipe.cli")) for m in below_cli}
    assert {m: t for m, t in offenders.items() if t} == {}


def _cli_commands() -> set[str]:
    root = typer.main.get_command(app)
    names = set()
    for name, cmd in root.commands.items():
        subs = getattr(cmd, "commands", None)
        names |= {f"{name} {s}" for s in subs} if subs else {name}
    return names


def test_every_stage_is_a_cli_command():
    assert set(STAGES) <= _cli_commands()


def test_import_dlpipe_loads_no_torch():
    code = "import sys, dlpipe, dlpipe.stages; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
