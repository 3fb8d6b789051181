"""The serving package never imports torch and does no work at import time."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys, threading
import embedder.grpc.server, embedder.cli, embedder.client
assert threading.active_count() == 1, threading.enumerate()
print("torch" in sys.modules, "onnxruntime" in sys.modules)
"""


def test_serving_modules_leave_torch_out_and_start_no_threads() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    torch_loaded, ort_loaded = out.stdout.split()
    assert torch_loaded == "False"
    assert ort_loaded == "True"  # the probe really imported the serving stack
