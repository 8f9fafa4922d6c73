"""Layout metrics of the package: files and lines per package, largest modules and
functions, import cycles between modules, and private names imported across packages.

Run ``python benchmarks/layout_metrics.py`` from the repository root; it prints a
Markdown report (used in the closing notes of layout changes).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "bids_harmony"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def imports(path: Path, module: str) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) of one file, relative imports resolved."""
    tree = ast.parse(path.read_text())
    out: list[tuple[str, list[str]]] = []
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_pkg:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                out.append((alias.name, []))
    return out


def main() -> int:
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(f): f for f in files}
    per_pkg: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    sizes = []
    functions = []
    graph: dict[str, set[str]] = defaultdict(set)
    private = []
    for mod, path in modules.items():
        text = path.read_text()
        n = text.count("\n")
        pkg = package_of(mod)
        per_pkg[pkg][0] += 1
        per_pkg[pkg][1] += n
        sizes.append((n, mod))
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{mod}.{node.name}"))
        for target, names in imports(path, mod):
            if not target.startswith("bids_harmony"):
                continue
            for name in names or [""]:
                sub = f"{target}.{name}" if name else target
                dep = sub if sub in modules else target
                if dep in modules and dep != mod:
                    graph[mod].add(dep)
                other_pkg = package_of(target)
                hidden = name.startswith("_") or any(
                    p.startswith("_") and p != "__init__" for p in target.split(".")
                )
                if hidden and other_pkg != pkg and not name.startswith("__"):
                    private.append(f"{mod} imports {target}.{name}")
    cycles = find_cycles(graph)
    print("| package | files | lines |\n|---|---|---|")
    for pkg in sorted(per_pkg):
        print(f"| {pkg} | {per_pkg[pkg][0]} | {per_pkg[pkg][1]} |")
    total_files = sum(v[0] for v in per_pkg.values())
    total_lines = sum(v[1] for v in per_pkg.values())
    print(f"| total | {total_files} | {total_lines} |")
    print("\nLargest modules: " + ", ".join(f"{m} ({n})" for n, m in sorted(sizes)[-5:][::-1]))
    print("Largest functions: " + ", ".join(f"{m} ({n})" for n, m in sorted(functions)[-5:][::-1]))
    print(f"Import cycles (module level, strongly connected groups): {len(cycles)}")
    for c in cycles:
        print("  - " + " <-> ".join(sorted(c)))
    print(f"Private names imported across packages: {len(private)}")
    for p in private:
        print("  - " + p)
    return 0


def find_cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of size > 1 (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
