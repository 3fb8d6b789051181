"""The import rules of docs/architecture.md hold, and there are no import cycles (function-level imports
count: a cycle hidden inside a function is still a cycle)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.import_rules import find_cycles, import_graph, rule_violations, third_party_imports

ROOT = Path(__file__).resolve().parents[2]

# What each part of embedder/ may import from embedder/ besides itself (docs/architecture.md).
EMBEDDER_RULES: dict[str, set[str]] = {
    "embedder": set(),  # the package's own __init__
    "embedder.errors": set(),
    "embedder.config": {"embedder.errors"},
    "embedder.metrics": set(),
    "embedder.options": set(),  # the per-vector options every way in shares
    "embedder.malloc": set(),  # glibc's arena cap, set once per server process
    "embedder.v1": set(),
    "embedder.core": {"embedder.errors", "embedder.config", "embedder.options"},
    "embedder.explain": {"embedder.core", "embedder.errors", "embedder.config"},
    "embedder.grpc": {
        "embedder.core",
        "embedder.explain",
        "embedder.errors",
        "embedder.config",
        "embedder.metrics",
        "embedder.v1",
        "embedder.http",  # server.py runs the process: it starts the HTTP front on its event loop
        "embedder.malloc",  # processes.py: serve_process, one server process with its malloc set up
    },
    "embedder.channel": set(),
    # The client speaks the wire format: the codec, never the server.
    "embedder.client": {
        "embedder.channel",
        "embedder.grpc.encoding",
        "embedder.v1",
        "embedder.errors",
        "embedder.options",
    },
    "embedder.bulk": {
        "embedder.core",
        "embedder.client",
        "embedder.config",
        "embedder.errors",
        "embedder.options",
    },
    "embedder.http": {"embedder.core", "embedder.errors", "embedder.config", "embedder.metrics"},
    "embedder.cli_flags": {"embedder.config"},  # which config fields each subcommand takes as flags
    "embedder.cli": {"embedder"},  # the entry point wires everything together
}

# Third-party packages a part must not import: the core and explain know no wire format or front end.
FORBIDDEN: dict[str, set[str]] = {
    "embedder.core": {"grpc", "grpc_health", "grpc_reflection", "google", "prometheus_client"},
    "embedder.explain": {"grpc", "grpc_health", "grpc_reflection", "google", "prometheus_client"},
    "embedder.http": {"grpc", "grpc_health", "grpc_reflection", "google"},
    "embedder": {"torch"},
}

# Packages checked for cycles (training/ had train <-> publish <-> export and corpus <-> corpus_cli).
NO_CYCLES = ["embedder", "training"]


@pytest.mark.parametrize("package", NO_CYCLES)
def test_no_import_cycles(package: str) -> None:
    assert find_cycles(import_graph(ROOT, package)) == []


def test_embedder_follows_the_import_rules() -> None:
    assert rule_violations(import_graph(ROOT, "embedder"), EMBEDDER_RULES) == []


def test_core_and_explain_import_no_wire_format() -> None:
    bad = []
    for module, tops in third_party_imports(ROOT, "embedder").items():
        for part, banned in FORBIDDEN.items():
            if module == part or module.startswith(part + "."):
                bad += [f"{module} imports {name}" for name in sorted(tops & banned)]
    assert bad == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_sees_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import thing\n",
            "pkg/b.py": "def thing():\n    from pkg import a\n    return a\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": "from ..a import thing\nfrom . import d\n",
            "pkg/sub/d.py": "import pkg.sub.c\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub.c"] == {"pkg.a", "pkg.sub.d"}  # relative imports resolved
    assert find_cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.sub.c", "pkg.sub.d"]]
    rules: dict[str, set[str]] = {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.sub": {"pkg.b"}}
    assert rule_violations(graph, rules) == [
        "pkg.b: no import rule covers it",
        "pkg.sub.c -> pkg.a",
    ]
