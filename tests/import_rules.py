"""Reads a package's imports with `ast` (module level and inside functions alike) and checks them.

`import_graph(root, package)` maps every module of `package` (a folder under `root`) to the modules of
the same top-level package it imports. `find_cycles` returns the import cycles (strongly connected
components of more than one module, or a module importing itself); `rule_violations` checks a table of
which package may import which (docs/architecture.md, "Import rules"). Point it at any folder:
tests/unit/test_import_rules.py runs it on `embedder` (and is where `training` will be switched on).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under root/package (packages by their __init__)."""
    found: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, str | None]]:
    """(module, name) pairs for every import statement anywhere in the tree (functions included)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield base, alias.name


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports (`from a import b` counts as `a.b` when b is one)."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str] = set()
        for base, member in _imported(tree, name, path.name == "__init__.py"):
            if member is not None and f"{base}.{member}" in modules:
                targets.add(f"{base}.{member}")
            elif base in modules:
                targets.add(base)
        targets.discard(name)
        graph[name] = targets
    return graph


def third_party_imports(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the top-level names it imports from outside `package` (e.g. grpc, google, torch)."""
    out: dict[str, set[str]] = {}
    for name, path in module_names(root, package).items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        tops = {base.split(".")[0] for base, _ in _imported(tree, name, path.name == "__init__.py") if base}
        out[name] = {top for top in tops if top != package.split(".", maxsplit=1)[0] and top != "__future__"}
    return out


def find_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted; sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def _owner(module: str, rules: Mapping[str, object]) -> str | None:
    """The longest rule key that is `module` or a package above it. A top-level key ("embedder") covers
    only the package's own __init__, so a new module without a rule of its own is caught."""
    keys = [k for k in rules if module == k or ("." in k and module.startswith(k + "."))]
    return max(keys, key=len) if keys else None


def _matches(target: str, allowed: set[str]) -> bool:
    return any(target == a or target.startswith(a + ".") for a in allowed)


def rule_violations(graph: Mapping[str, set[str]], rules: Mapping[str, set[str]]) -> list[str]:
    """'a -> b' for every import the table does not allow; a module no rule covers is a violation too.

    `rules[k]` lists what modules under `k` may import besides `k` itself (prefixes: "p" allows "p.x").
    """
    problems: list[str] = []
    for module, targets in sorted(graph.items()):
        owner = _owner(module, rules)
        if owner is None:
            problems.append(f"{module}: no import rule covers it")
            continue
        allowed = {owner, *rules[owner]}
        problems += [f"{module} -> {t}" for t in sorted(targets) if not _matches(t, allowed)]
    return problems
