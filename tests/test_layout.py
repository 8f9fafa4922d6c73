"""Package layout rules: no private name imported across packages, no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import bids_harmony

ROOT = Path(bids_harmony.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> list[tuple[str, str]]:
    """(module, name) pairs imported by a file; relative imports resolved."""
    pairs = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = module.split(".")
                base = base if path.name == "__init__.py" else base[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            pairs += [(target, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            pairs += [(alias.name, "") for alias in node.names]
    return [(m, n) for m, n in pairs if m.startswith("bids_harmony")]


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_private_name_is_imported_from_another_package():
    offenders = []
    for module, path in _modules().items():
        for target, name in _imports(module, path):
            if _package(target) == _package(module):
                continue
            hidden = [p for p in [*target.split("."), name] if p.startswith("_")
                      and not p.startswith("__")]  # fmt: skip
            if hidden:
                offenders.append(f"{module} imports {target}.{name}")
    assert not offenders, offenders


def test_the_checker_sees_a_private_import(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("from bids_harmony.dmri._hidden import thing\nfrom . import _y\n")
    found = _imports("bids_harmony.workflows.x", path)
    assert ("bids_harmony.dmri._hidden", "thing") in found
    assert ("bids_harmony.workflows", "_y") in found


def test_no_import_cycle_between_modules():
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        deps = set()
        for target, name in _imports(module, path):
            dep = f"{target}.{name}" if f"{target}.{name}" in modules else target
            if dep in modules and dep != module and not module.startswith(dep + "."):
                deps.add(dep)
        graph[module] = deps
    # depth-first search for a back edge
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle.extend([*stack[stack.index(dep):], dep] if dep in stack else [node, dep])
                return True
            if dep not in state and visit(dep, [*stack, dep]):
                return True
        state[node] = 2
        return False

    for module in sorted(graph):
        if module not in state and visit(module, [module]):
            break
    assert not cycle, " -> ".join(cycle)
