"""The proto as other toolchains see it: `buf lint` is clean and `buf breaking` finds no breaking change
against the last released proto (the verbatim snapshot in proto-releases/; rules and the reasoned
exceptions are in buf.yaml). buf comes from npm (@bufbuild/buf in clients/node, `make node-deps`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.prereqs import NODE_CLIENT, REPO

pytestmark = pytest.mark.requires_node

BUF = NODE_CLIENT / "node_modules" / ".bin" / "buf"
RELEASES = REPO / "proto-releases"
PROTO = Path("protos/streamrec/embedder/v1/embedder.proto")


def last_release() -> Path:
    """The newest snapshot directory, by version number (0.10.0 sorts after 0.9.0)."""
    folders = [p for p in RELEASES.iterdir() if p.is_dir()]
    versions = sorted(folders, key=lambda p: tuple(int(x) for x in p.name.split(".")))
    return versions[-1]


def buf(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_buf_lint_is_clean() -> None:
    proc = buf("lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_breaking_change_since_the_last_release() -> None:
    proc = buf("breaking", "--against", str(last_release()))
    assert proc.returncode == 0, f"breaking change against {last_release().name}:\n{proc.stdout}{proc.stderr}"


def test_breaking_check_catches_a_renumbered_field(tmp_path: Path) -> None:
    """The check above can fail: the same config on a copy with one field renumbered does."""
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(REPO / "protos", tmp_path / "protos")
    proto = tmp_path / PROTO
    text, n = re.subn(r"string request_id = 6;", "string request_id = 16;", proto.read_text(), count=1)
    assert n == 1
    proto.write_text(text)
    proc = buf("breaking", "--against", str(last_release()), cwd=tmp_path)
    assert proc.returncode != 0
    assert "request_id" in proc.stdout, proc.stdout + proc.stderr


def test_go_and_java_packages_are_set() -> None:
    text = (REPO / PROTO).read_text()
    for option in ("go_package", "java_package", "java_multiple_files"):
        assert re.search(rf"^option {option} = ", text, re.MULTILINE), option
