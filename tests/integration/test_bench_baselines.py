"""The benchmark's baseline bundles compute what the models they stand for compute.

- The model2vec wrapper (Gather + masked weighted mean in ONNX) equals the numpy definition, on a small
  random table, with padding and zero-weight (special) tokens.
- The MiniLM fp32 bundle, served by our runtime, equals sentence-transformers' all-MiniLM-L6-v2 (mean
  pooling + normalize) truncated at the bundle's 128 tokens: it is the teacher, so teacher agreement
  in the benchmark is measured against the real teacher. Built into benchmarks/.cache on first use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from benchmarks.baselines import MAX_TOKENS, _static_onnx, ensure_baseline, teacher_dir
from embedder.config import load_config
from embedder.core.bundle import load_bundle
from embedder.core.engine import EmbeddingEngine
from tests.support import sample_texts


def test_static_wrapper_is_a_masked_weighted_mean(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 8)).astype(np.float32)
    weights = np.ones(50, dtype=np.float32)
    weights[[0, 1, 2]] = 0.0  # pad / special tokens: never pooled
    _static_onnx(table, weights, tmp_path / "m.onnx")
    ids = np.array([[1, 5, 7, 2, 0, 0], [1, 9, 9, 9, 11, 2], [1, 2, 0, 0, 0, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    mask[0, 4] = 1  # a masked-in pad still has weight 0
    (got,) = ort.InferenceSession(str(tmp_path / "m.onnx")).run(
        None, {"input_ids": ids, "attention_mask": mask}
    )
    expected = np.zeros((3, 8), dtype=np.float32)
    for row in range(2):
        keep = [i for i, m in zip(ids[row], mask[row], strict=True) if m and weights[i] > 0]
        expected[row] = table[keep].mean(axis=0)
    np.testing.assert_allclose(got, expected, atol=1e-6)  # row 2 has no word piece: zeros, not NaN


@pytest.mark.timeout(600)
def test_minilm_bundle_equals_sentence_transformers() -> None:
    from sentence_transformers import SentenceTransformer

    bundle = load_bundle(ensure_baseline("minilm-fp32"))
    texts = [*sample_texts(40, seed=5), "a", "Stranger Things: kids, a lab and a monster " * 20]
    st = SentenceTransformer(str(teacher_dir()), device="cpu")
    st.max_seq_length = MAX_TOKENS
    expected = st.encode(texts, normalize_embeddings=True, batch_size=16)
    engine = EmbeddingEngine(bundle, load_config({"bundle": str(bundle.path), "workers": 1}, env={}))
    try:
        got = engine.embed_in_process(texts)
    finally:
        engine.close_sync()
    np.testing.assert_allclose(got, expected, atol=1e-5)
