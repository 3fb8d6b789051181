"""training/export.py's explain graph: parity with torch, the serving graph untouched, add-explain."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

pytest.importorskip("torch")

import torch

from embedder.core.bundle import load_bundle
from training.config import load_job_config
from training.export import add_explain, explain_parity, write_bundle
from training.model import CNNEncoder

TINY = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny.toml"


def _model(seed: int) -> CNNEncoder:
    torch.manual_seed(seed)
    model = CNNEncoder(load_job_config(str(TINY)).model)
    for m in model.modules():  # non-trivial BN stats, as export_random_bundle does
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.running_mean, 0.0, 0.1)  # type: ignore[arg-type]
    return model.eval()


def _write(model: CNNEncoder, out: Path, explain: bool) -> None:
    write_bundle(model, out, name="t", version="0", max_tokens=64, source={}, metrics={}, explain=explain)


def test_serving_graph_has_only_embeddings_and_explain_graph_is_exact(tmp_path: Path) -> None:
    model = _model(0)
    _write(model, tmp_path / "b", explain=True)
    bundle = load_bundle(tmp_path / "b")
    serving = ort.InferenceSession(str(bundle.model_path))
    assert [o.name for o in serving.get_outputs()] == ["embeddings"]  # model.onnx pays nothing for Explain
    assert bundle.explain_path is not None
    explain = ort.InferenceSession(str(bundle.explain_path))
    assert [o.name for o in explain.get_outputs()] == ["embeddings", "token_contributions", "bias"]
    assert explain_parity(model, bundle.explain_path, seed=3) <= 1e-5


def test_add_explain_to_an_older_bundle_checks_the_checkpoint(tmp_path: Path) -> None:
    model = _model(1)
    _write(model, tmp_path / "old", explain=False)
    assert load_bundle(tmp_path / "old").explain_path is None
    with pytest.raises(ValueError, match="checkpoint does not match"):
        add_explain(tmp_path / "old", _model(2))
    assert not (tmp_path / "old" / "explain.onnx").exists()
    before = load_bundle(tmp_path / "old").manifest
    after = add_explain(tmp_path / "old", model).manifest
    assert after.explain_model == "explain.onnx" and after.explain_sha256
    assert after.sha256 == before.sha256 and after.name == before.name  # model.onnx untouched
