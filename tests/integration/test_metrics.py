"""/metrics: exactly the names docs/api.md lists, parsed with prometheus_client's parser; counters = calls."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from embedder.metrics import METRIC_NAMES
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import ServerThread, sample_texts

# docs/api.md "Metrics", written out here on purpose: a rename in the code must fail this test.
DESIGN_NAMES = {
    "streamrec_embedder_requests_total",
    "streamrec_embedder_items_total",
    "streamrec_embedder_tokens_total",
    "streamrec_embedder_request_latency_seconds",
    "streamrec_embedder_queue_wait_seconds",
    "streamrec_embedder_inference_seconds",
    "streamrec_embedder_batch_items",
    "streamrec_embedder_batch_tokens",
    "streamrec_embedder_padding_ratio",
    "streamrec_embedder_queue_items",
    "streamrec_embedder_model_info",
}


def scrape(url: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    families: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        families[name] = [(s.name, s.labels, s.value) for s in family.samples]
    return families


def value(families: dict, family: str, sample: str, **labels: str) -> float:
    found = [
        v
        for name, lab, v in families[family]
        if name == sample and all(lab.get(k) == x for k, x in labels.items())
    ]
    assert len(found) == 1, (family, sample, labels, families[family])
    return found[0]


def test_metric_names_and_counters_match_the_calls(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server()
    texts = sample_texts(30, seed=9)
    token_total = 0
    item_total = 0
    with grpc.insecure_channel(srv.address) as ch:
        stub = pb_grpc.EmbedderStub(ch)
        for i in range(5):
            resp = stub.Embed(pb.EmbedRequest(texts=texts[i * 6 : (i + 1) * 6]), timeout=30)
            token_total += resp.total_tokens
            item_total += resp.count
        with pytest.raises(grpc.RpcError):
            stub.Embed(pb.EmbedRequest(texts=[]), timeout=30)
        stream = [
            pb.EmbedRequest(texts=texts[:2]),
            pb.EmbedRequest(texts=[]),
            pb.EmbedRequest(texts=texts[2:5]),
        ]
        for resp in stub.EmbedStream(iter(stream), timeout=30):
            token_total += resp.total_tokens
            item_total += resp.count
        stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)

    families = scrape(srv.metrics_url)
    assert DESIGN_NAMES <= set(families) == set(METRIC_NAMES)  # extras: docs/operations.md
    requests = "streamrec_embedder_requests_total"
    assert value(families, requests, requests, method="Embed", code="OK") == 5
    assert value(families, requests, requests, method="Embed", code="INVALID_ARGUMENT") == 1
    assert value(families, requests, requests, method="EmbedStream", code="OK") == 2
    assert value(families, requests, requests, method="EmbedStream", code="INVALID_ARGUMENT") == 1
    assert value(families, requests, requests, method="GetModelInfo", code="OK") == 1
    assert (
        value(families, "streamrec_embedder_items_total", "streamrec_embedder_items_total")
        == item_total
        == 35
    )
    assert (
        value(families, "streamrec_embedder_tokens_total", "streamrec_embedder_tokens_total") == token_total
    )
    latency = "streamrec_embedder_request_latency_seconds"
    assert value(families, latency, latency + "_count", method="Embed") == 6
    batch_items = "streamrec_embedder_batch_items"
    assert value(families, batch_items, batch_items + "_sum") == 35
    assert value(families, "streamrec_embedder_queue_items", "streamrec_embedder_queue_items") == 0
    m = srv.running.engine.manifest
    info = "streamrec_embedder_model_info"
    assert value(families, info, info, name=m.name, version=m.version, dim=str(m.dim)) == 1
    ratio = "streamrec_embedder_padding_ratio"
    assert value(families, ratio, ratio + "_count") == value(families, batch_items, batch_items + "_count")
    # Padding efficiency: every real token ran once (no batch was re-run), padding on top of them.
    real, padded = (
        "streamrec_embedder_batch_real_tokens_total",
        "streamrec_embedder_batch_padded_tokens_total",
    )
    assert value(families, real, real) == token_total
    assert value(families, padded, padded) >= token_total
