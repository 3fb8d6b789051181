"""The committed default bundle (embedder.config.DEFAULT_BUNDLE) served over gRPC equals plain ONNX Runtime.

The reference here uses onnxruntime and tokenizers directly, not the embedder package, so a bug shared
by the server and its own in-process path cannot hide.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from embedder import config
from embedder.client import ClientOptions, EmbedderClient
from embedder.core.bundle import load_bundle
from tests.support import ServerThread, sample_texts

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / config.DEFAULT_BUNDLE


@pytest.mark.skipif(
    not (DEFAULT_BUNDLE / "manifest.json").is_file(), reason="default bundle not committed yet"
)
def test_default_bundle_over_grpc_equals_plain_onnx(start_server: Callable[..., ServerThread]) -> None:
    bundle = load_bundle(DEFAULT_BUNDLE)
    m = bundle.manifest
    texts = sample_texts(48, seed=21)

    tok = Tokenizer.from_file(str(bundle.tokenizer_path))
    tok.no_padding()
    tok.enable_truncation(m.max_tokens)
    session = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
    expected = []
    for text in texts:
        ids = np.array([tok.encode(text).ids], dtype=np.int64)
        (row,) = session.run(["embeddings"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        expected.append(row[0])

    srv = start_server(served=bundle)
    with EmbedderClient(srv.address, ClientOptions(normalize=False)) as client:
        got = client.embed(texts)
    assert np.abs(got - np.stack(expected)).max() <= 1e-5
