"""What some tests need beyond `make test`'s Python install, and how to get it.

A test declares a need with a marker (`@pytest.mark.requires_stsb`, `requires_nginx`,
`requires_prometheus`, `requires_node`); tests/conftest.py checks it before the test runs. Where the
thing is missing the test skips with one line naming it and how to get it, and pytest's `-ra` summary
folds all the tests that miss the same thing into that one line. Under `CI=true` a missing prerequisite
fails the test instead: CI (.ci/run) installs everything, so a skip there would hide a broken install.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Where training/ and benchmarks/ read STS-B: `shared/data/stsb` next to the checkout (never in the repo).
STSB_DIR = REPO.parent / "shared" / "data" / "stsb"
NODE_CLIENT = REPO / "clients" / "node"


@dataclass(frozen=True)
class Prerequisite:
    """Something outside the Python install; `check()` returns "" if present, else what is missing."""

    marker: str
    what: str
    how: str
    check: Callable[[], str]


def system_tool(name: str) -> str | None:
    """Path of a system binary, also looking in the sbin directories a non-root PATH may lack."""
    return shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )


def _missing_files(root: Path, names: tuple[str, ...]) -> str:
    absent = [name for name in names if not (root / name).is_file()]
    return f"{', '.join(absent)} not in {root}" if absent else ""


def _missing_tools(*names: str) -> Callable[[], str]:
    def check() -> str:
        absent = [name for name in names if system_tool(name) is None]
        return f"no {', '.join(f'`{n}`' for n in absent)} on PATH" if absent else ""

    return check


def _missing_node() -> str:
    if shutil.which("node") is None:
        return "no `node` on PATH"
    return _missing_files(NODE_CLIENT / "node_modules", ("@grpc/grpc-js/package.json", ".bin/buf"))


PREREQUISITES = {
    p.marker: p
    for p in (
        Prerequisite(
            "requires_stsb",
            "STS-B",
            "put the STS Benchmark in ../shared/data/stsb/ next to the checkout (docs/data.md)",
            lambda: _missing_files(STSB_DIR, ("sts-train.csv", "sts-dev.csv")),
        ),
        Prerequisite(
            "requires_nginx",
            "nginx",
            "run `sudo scripts/install_system_deps.sh`",
            _missing_tools("nginx"),
        ),
        Prerequisite(
            "requires_prometheus",
            "Prometheus",
            "run `sudo scripts/install_system_deps.sh`",
            _missing_tools("prometheus", "promtool"),
        ),
        Prerequisite(
            "requires_node",
            "Node.js 18+ and the npm packages of clients/node",
            "install Node.js, then `make node-deps`",
            _missing_node,
        ),
    )
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@cache
def missing(marker: str) -> str:
    """ "" if the prerequisite behind `marker` is present, else one line: what is missing, how to get it."""
    need = PREREQUISITES[marker]
    absent = need.check()
    return f"needs {need.what} ({absent}): {need.how}" if absent else ""
