"""Explain over gRPC on a real server (port 0) with the fixture bundle's real explain graph.

Completeness is checked against what Embed serves (model.onnx, a different graph): the contributions
must add up to the similarity the ranking pipeline actually sees, not just to the explain graph's own.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedder.client import decode
from embedder.core.bundle import Bundle, save_bundle
from embedder.explain.explainer import MAX_PENDING, Explainer
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import ServerThread, sample_texts

WORD, SPECIAL, BIAS = pb.ATTRIBUTION_KIND_WORD, pb.ATTRIBUTION_KIND_SPECIAL, pb.ATTRIBUTION_KIND_BIAS
UNICODE = "Unbelievably  naïve Café-owners ❤ 東京タワー (x²) don't re-tokenize"
COMPLETE = 1e-4
EXPLAIN = "/streamrec.embedder.v1.Embedder/Explain"


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[pb_grpc.EmbedderStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.EmbedderStub(channel)


def served_cosine(stub: pb_grpc.EmbedderStub, q: str, c: str, dimensions: int = 0) -> float:
    emb = decode(stub.Embed(pb.EmbedRequest(texts=[q, c], dimensions=dimensions), timeout=30))
    return float(emb[0] @ emb[1])


def _pairs() -> list[tuple[str, str]]:
    texts = sample_texts(16, seed=5)  # 1..60 words: some exceed max_tokens and are truncated
    return [
        ("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing."),
        (UNICODE, "naive cafe owners in Tokyo"),
        ("x", "a completely different and much longer text about music and guitars"),
        *zip(texts[::2], texts[1::2], strict=True),
    ]


def test_contributions_sum_to_the_served_similarity(stub: pb_grpc.EmbedderStub) -> None:
    for q, c in _pairs():
        resp = stub.Explain(
            pb.ExplainRequest(query=q, candidate=c, top_pairs=5, request_id="ex-1"), timeout=30
        )
        assert resp.similarity == pytest.approx(served_cosine(stub, q, c), abs=COMPLETE)
        for side in (resp.query, resp.candidate):
            assert sum(t.contribution for t in side.tokens) == pytest.approx(resp.similarity, abs=COMPLETE)
            assert [t.kind for t in side.tokens][-1] == BIAS
        terms = [p.contribution for p in resp.top_pairs]
        assert 0 < len(terms) <= 5 and terms == sorted(terms, reverse=True)
        for p in resp.top_pairs:
            assert resp.query.tokens[p.query_index].kind == WORD
            assert resp.candidate.tokens[p.candidate_index].kind == WORD
        assert resp.request_id == "ex-1" and resp.dim == 384
        assert resp.timing.total_us >= resp.timing.inference_us > 0


def test_matryoshka_dimensions_explain_the_truncated_similarity(stub: pb_grpc.EmbedderStub) -> None:
    q, c = "jazz piano trio live", "a live recording of a piano trio"
    resp = stub.Explain(pb.ExplainRequest(query=q, candidate=c, dimensions=64), timeout=30)
    assert resp.dim == 64
    assert resp.similarity == pytest.approx(served_cosine(stub, q, c, dimensions=64), abs=COMPLETE)
    assert sum(t.contribution for t in resp.query.tokens) == pytest.approx(resp.similarity, abs=COMPLETE)


def test_single_text_saliency(stub: pb_grpc.EmbedderStub) -> None:
    resp = stub.Explain(pb.ExplainRequest(query="stranger things: kids, a lab and a monster"), timeout=30)
    assert not resp.HasField("candidate") and not resp.top_pairs
    assert resp.similarity == pytest.approx(1.0, abs=1e-6)
    assert sum(t.contribution for t in resp.query.tokens) == pytest.approx(1.0, abs=COMPLETE)


def test_offsets_map_back_to_the_original_text(stub: pb_grpc.EmbedderStub) -> None:
    resp = stub.Explain(pb.ExplainRequest(query=UNICODE, candidate="x"), timeout=30)
    raw = UNICODE.encode("utf-8")
    tokens = list(resp.query.tokens)
    assert [t.kind for t in tokens[:1] + tokens[-2:]] == [SPECIAL, SPECIAL, BIAS]
    assert [t.text for t in tokens[:1] + tokens[-2:]] == ["[CLS]", "[SEP]", "[bias]"]
    words = [t for t in tokens if t.kind == WORD]
    for t in words:
        assert UNICODE[t.char_start : t.char_end] == t.text
        assert raw[t.byte_start : t.byte_end].decode("utf-8") == t.text
    ends = [(t.char_start, t.char_end) for t in words]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ends))  # in order, no overlap
    by_text = {t.text: list(t.pieces) for t in words}
    assert by_text["Unbelievably"][0] == "un" and len(by_text["Unbelievably"]) > 1
    assert by_text["naïve"] == ["naive"] and by_text["x²"] == ["x", "##²"]
    assert {"❤", "東", "tokenize"} <= set(by_text)


def test_truncated_text_is_flagged(stub: pb_grpc.EmbedderStub, bundle: Bundle) -> None:
    long_text = " ".join(["music"] * 300)
    resp = stub.Explain(pb.ExplainRequest(query=long_text), timeout=30)
    assert resp.query.truncated and resp.query.token_count == bundle.manifest.max_tokens
    assert sum(t.kind == WORD for t in resp.query.tokens) == bundle.manifest.max_tokens - 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query": ""}, r"^query: empty"),
        ({"query": "q" * 101}, r"^query: 101 characters exceed max_text_chars=100"),
        ({"query": "q", "candidate": "c" * 101}, r"^candidate: 101 characters exceed max_text_chars=100"),
        ({"query": "q", "top_pairs": 1000}, r"^top_pairs: 1000 outside 0\.\.256"),
        ({"query": "q", "dimensions": 7}, r"^dimensions: 7 not supported"),
        (
            {"query": "q", "candidate": "!" * 90, "truncate": False},
            r"^candidate: longer than max_tokens",
        ),
        ({"query": "q", "request_id": "bad\nid"}, r"^request_id: must be at most 128 printable"),
    ],
)
def test_bad_input_is_invalid_argument(
    start_server: Callable[..., ServerThread], kwargs: dict[str, object], message: str
) -> None:
    srv = start_server(max_text_chars=100)
    with grpc.insecure_channel(srv.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.EmbedderStub(channel).Explain(pb.ExplainRequest(**kwargs), timeout=30)  # type: ignore[arg-type]
        err: grpc.Call = info.value  # type: ignore[assignment]
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert re.search(message, err.details()), err.details()


def test_invalid_utf8_on_the_wire_is_invalid_argument(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.unary_unary(EXPLAIN, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\x0a\x02\xff\xfe", timeout=10)  # field 1 (query) = two bytes that are not UTF-8
    err: grpc.Call = info.value  # type: ignore[assignment]
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("request: not a valid ExplainRequest") and "UTF-8" in err.details()


def _without_explain(bundle: Bundle, where: Path) -> Bundle:
    fields = bundle.manifest.writer_fields()
    return save_bundle(where, bundle.model_path, bundle.tokenizer_path, **fields)


def test_bundle_without_explain_answers_unimplemented(
    bundle: Bundle, start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    srv = start_server(served=_without_explain(bundle, tmp_path / "plain"))
    with grpc.insecure_channel(srv.address) as channel:
        stub = pb_grpc.EmbedderStub(channel)
        assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).supports_explain is False
        with pytest.raises(grpc.RpcError) as info:
            stub.Explain(pb.ExplainRequest(query="a", candidate="b"), timeout=10)
        err: grpc.Call = info.value  # type: ignore[assignment]
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "does not support Explain" in err.details() and bundle.manifest.name in err.details()
        assert stub.Embed(pb.EmbedRequest(texts=["still serving"]), timeout=10).count == 1
    metrics = urllib.request.urlopen(srv.metrics_url, timeout=10).read().decode()
    key = f"{bundle.manifest.name}@{bundle.manifest.version}"
    assert f'requests_total{{code="UNIMPLEMENTED",method="Explain",model="{key}"}} 1.0' in metrics


def test_model_info_says_explain_is_supported(stub: pb_grpc.EmbedderStub) -> None:
    assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).supports_explain is True


def test_explain_runs_off_the_loop_and_refuses_beyond_its_queue(
    start_server: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the explain thread is stuck, Embed still answers (the loop is free), at most MAX_PENDING
    Explain calls wait, the rest get RESOURCE_EXHAUSTED at once, and the waiting ones finish later."""
    release = threading.Event()
    real_run = Explainer.run

    def stuck_run(self: Explainer, *args: object, **kwargs: object) -> object:
        release.wait(30)
        return real_run(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Explainer, "run", stuck_run)
    srv = start_server()
    with grpc.insecure_channel(srv.address) as channel, ThreadPoolExecutor(8) as pool:
        stub = pb_grpc.EmbedderStub(channel)
        calls = [
            stub.Explain.future(pb.ExplainRequest(query=f"q{i}"), timeout=60) for i in range(MAX_PENDING + 6)
        ]
        deadline = time.monotonic() + 20
        while sum(c.done() for c in calls) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # room for a wrong 7th refusal to show up
        refused = [c for c in calls if c.done()]
        assert len(refused) == 6
        assert {c.code() for c in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}  # type: ignore[attr-defined]
        embedded = pool.submit(stub.Embed, pb.EmbedRequest(texts=["the loop is free"]), timeout=10)
        assert embedded.result().count == 1
        release.set()
        done = [c.result().similarity for c in calls if c not in refused]
        assert len(done) == MAX_PENDING and np.allclose(done, 1.0, atol=1e-6)
