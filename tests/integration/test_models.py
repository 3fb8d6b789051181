"""Several models and versions in one real server: resolution, responses that name their version,
GetModelInfo listing, NOT_FOUND / FAILED_PRECONDITION, ReloadModels (+ API key), the client and CLI."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedder.cli import main
from embedder.client import EmbedderClient, decode
from embedder.core.bundle import Bundle
from embedder.core.engine import EmbeddingEngine
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import ServerThread, add_version, embed_reference, make_repository

TEXTS = ["a red guitar on stage", "space documentary about black holes"]


def key(b: Bundle) -> str:
    return f"{b.manifest.name}@{b.manifest.version}"


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_each_version_answers_with_its_own_vectors_and_says_which(
    start_server: Callable[..., ServerThread],
    bundle: Bundle,
    bundle_v2: Bundle,
    reference: EmbeddingEngine,
    reference_v2: EmbeddingEngine,
) -> None:
    srv = start_server([bundle, bundle_v2])
    name = bundle.manifest.name
    v1 = embed_reference(reference, TEXTS)
    v2 = embed_reference(reference_v2, TEXTS)
    assert np.abs(v1 - v2).max() > 0.1  # two spaces: a mislabelled vector cannot pass for the other
    with grpc.insecure_channel(srv.address) as channel:
        stub = pb_grpc.EmbedderStub(channel)
        for spec, want, expected in (
            ("", bundle_v2, v2),  # the default model at its highest version
            (name, bundle_v2, v2),
            (key(bundle), bundle, v1),  # pinned
            (key(bundle_v2), bundle_v2, v2),
        ):
            response = stub.Embed(pb.EmbedRequest(texts=TEXTS, model=spec), timeout=30)
            assert (response.model, response.model_version) == (name, want.manifest.version), spec
            assert response.bundle_sha256 == want.manifest.sha256
            np.testing.assert_allclose(decode(response), expected, atol=1e-5)
        explained = stub.Explain(pb.ExplainRequest(query="a", candidate="b", model=key(bundle)), timeout=30)
        assert (explained.model_version, explained.bundle_sha256) == ("0.0.0", bundle.manifest.sha256)
        streamed = list(
            stub.EmbedStream(iter([pb.EmbedRequest(texts=TEXTS[:1], model=key(bundle))]), timeout=30)
        )
        assert streamed[0].model_version == "0.0.0"


def test_get_model_info_lists_every_version_and_unknown_models_are_not_found(
    start_server: Callable[..., ServerThread], bundle: Bundle, bundle_v2: Bundle
) -> None:
    srv = start_server([bundle, bundle_v2])
    with grpc.insecure_channel(srv.address) as channel:
        stub = pb_grpc.EmbedderStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert (info.version, info.is_default, info.is_name_default) == ("1.0.0", True, True)
        listed = [(m.version, m.sha256, m.is_default, m.limits.max_texts_per_request) for m in info.models]
        limit = srv.config.max_texts_per_request
        assert listed == [
            ("0.0.0", bundle.manifest.sha256, False, limit),
            ("1.0.0", bundle_v2.manifest.sha256, True, limit),
        ]
        pinned = stub.GetModelInfo(pb.GetModelInfoRequest(model=key(bundle)), timeout=10)
        assert (pinned.version, pinned.is_default) == ("0.0.0", False)
        err = rpc_error(lambda: stub.Embed(pb.EmbedRequest(texts=["x"], model="bert@1"), timeout=10))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert f"loaded: {key(bundle)}, {key(bundle_v2)} (default)" in err.details()
        err = rpc_error(lambda: stub.Embed(pb.EmbedRequest(texts=["x"], model="bert@"), timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    metrics = urllib.request.urlopen(srv.metrics_url, timeout=10).read().decode()
    assert 'requests_total{code="NOT_FOUND",method="Embed",model="none"} 1.0' in metrics


def test_reload_rolls_the_repository_and_pinned_callers_of_a_removed_version_are_told(
    start_server: Callable[..., ServerThread],
    bundle: Bundle,
    bundle_v2: Bundle,
    reference_v2: EmbeddingEngine,
    tmp_path: Path,
) -> None:
    repo = make_repository(tmp_path / "models", bundle)
    srv = start_server(model_repository=str(repo))
    with grpc.insecure_channel(srv.address) as channel:
        stub = pb_grpc.EmbedderStub(channel)
        assert stub.Embed(pb.EmbedRequest(texts=TEXTS), timeout=30).model_version == "0.0.0"
        add_version(repo, bundle_v2)
        broken = repo / "other" / "1"
        shutil.copytree(bundle.path, broken)  # its manifest says another name: refused, nothing else moves
        report = stub.ReloadModels(pb.ReloadModelsRequest(), timeout=60)
        assert list(report.added) == [key(bundle_v2)] and list(report.removed) == []
        assert len(report.errors) == 1 and "the folder must be NAME/VERSION/" in report.errors[0]
        response = stub.Embed(pb.EmbedRequest(texts=TEXTS), timeout=30)
        assert response.model_version == "1.0.0"  # the new default, once loaded and warm
        np.testing.assert_allclose(decode(response), embed_reference(reference_v2, TEXTS), atol=1e-5)
        shutil.rmtree(repo / bundle.manifest.name / bundle.manifest.version)
        report = stub.ReloadModels(pb.ReloadModelsRequest(), timeout=60)
        assert list(report.removed) == [key(bundle)] and list(report.loaded) == [key(bundle_v2)]
        err = rpc_error(lambda: stub.Embed(pb.EmbedRequest(texts=TEXTS, model=key(bundle)), timeout=10))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "was removed" in err.details() and "['1.0.0']" in err.details()
    metrics = urllib.request.urlopen(srv.metrics_url, timeout=10).read().decode()
    assert f'queue_items{{model="{key(bundle_v2)}"}}' in metrics
    assert f'queue_items{{model="{key(bundle)}"}}' not in metrics  # the removed version's series went


def test_reload_needs_an_api_key_when_keys_are_on(
    start_server: Callable[..., ServerThread], bundle: Bundle, tmp_path: Path
) -> None:
    repo = make_repository(tmp_path / "models", bundle)
    srv = start_server(model_repository=str(repo), api_keys="admin-key")
    with grpc.insecure_channel(srv.address) as channel:
        stub = pb_grpc.EmbedderStub(channel)
        err = rpc_error(lambda: stub.ReloadModels(pb.ReloadModelsRequest(), timeout=10))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        auth = (("authorization", "Bearer admin-key"),)
        report = stub.ReloadModels(pb.ReloadModelsRequest(), timeout=60, metadata=auth)
        assert list(report.loaded) == [key(bundle)]


def test_client_pins_a_version_and_the_cli_lists_models(
    start_server: Callable[..., ServerThread],
    bundle: Bundle,
    bundle_v2: Bundle,
    reference: EmbeddingEngine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    srv = start_server([bundle, bundle_v2])
    with EmbedderClient(srv.address, model=key(bundle)) as client:
        np.testing.assert_allclose(client.embed(TEXTS), embed_reference(reference, TEXTS), atol=1e-5)
        assert client.model_info().version == "0.0.0"
        assert len(client.model_info().models) == 2
    assert main(["models", "--address", srv.address]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(m["model"], m["default"]) for m in lines] == [(key(bundle), False), (key(bundle_v2), True)]
    assert lines[0]["sha256"] == bundle.manifest.sha256
