"""The committed gRPC stubs are exactly what `make proto` generates from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = "protos/streamrec/embedder/v1/embedder.proto"
STUBS = ("embedder_pb2.py", "embedder_pb2.pyi", "embedder_pb2_grpc.py")


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-Iprotos/streamrec",
        f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        PROTO,
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=60)
    for name in STUBS:
        fresh = (tmp_path / "embedder" / "v1" / name).read_bytes()
        committed = (ROOT / "embedder" / "v1" / name).read_bytes()
        assert fresh == committed, f"embedder/v1/{name} drifted from {PROTO}: run `make proto` and commit"
