"""The OpenAI-compatible HTTP front on a real server (gRPC and HTTP on port 0): the official `openai`
client gets the vectors gRPC serves (float and base64, <= 1e-6), and raw HTTP gets OpenAI-shaped errors
with the right status (400, 401, 404, 413, 429, 503), readiness, and the shared request metrics.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from embedder.channel import ChannelSecurity
from embedder.client import ClientOptions, EmbedderClient
from embedder.core.bundle import Bundle
from embedder.core.engine import EmbeddingEngine
from tests.certs import CertificateAuthority
from tests.hardening import Faults, FaultServer, sample, wait_until
from tests.support import ServerThread, embed_reference, make_config, sample_texts

SAME = 1e-6
TEXTS = [*sample_texts(10, seed=3), "héllo wörld", "数据"]


def url(srv: ServerThread, path: str) -> str:
    assert srv.running.http_port is not None
    return f"http://127.0.0.1:{srv.running.http_port}{path}"


def call(
    srv: ServerThread,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of one request; POST when there is a body."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(
        url(srv, path), data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def http_server(start_server: Callable[..., ServerThread]) -> ServerThread:
    return start_server(http_port=0, http_host="127.0.0.1")


@pytest.fixture
def client(http_server: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=url(http_server, "/v1"), api_key="unused", max_retries=0) as c:
        yield c


def grpc_vectors(srv: ServerThread, texts: list[str], dimensions: int = 0) -> Any:
    with EmbedderClient(srv.address, ClientOptions(dimensions=dimensions)) as c:
        return c.embed(texts)


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_openai_client_gets_what_grpc_serves(
    http_server: ServerThread, client: openai.OpenAI, bundle: Bundle, encoding_format: str
) -> None:
    resp = client.embeddings.create(model=bundle.manifest.name, input=TEXTS, encoding_format=encoding_format)
    assert resp.model == f"{bundle.manifest.name}@{bundle.manifest.version}"  # the version that answered
    assert [d.index for d in resp.data] == list(range(len(TEXTS)))
    if encoding_format == "float":
        got = np.array([d.embedding for d in resp.data], dtype=np.float32)
    else:  # the client hands base64 through as given: little-endian float32
        import base64

        got = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in resp.data])  # type: ignore[arg-type]
    assert np.abs(got - grpc_vectors(http_server, TEXTS)).max() <= SAME
    assert resp.usage.prompt_tokens == resp.usage.total_tokens > len(TEXTS)


def test_one_string_and_dimensions(http_server: ServerThread, client: openai.OpenAI, bundle: Bundle) -> None:
    resp = client.embeddings.create(model=bundle.manifest.name, input="one text", dimensions=64)
    got = np.array(resp.data[0].embedding, dtype=np.float32)
    assert got.shape == (64,)
    assert np.abs(got - grpc_vectors(http_server, ["one text"], dimensions=64)[0]).max() <= SAME


def test_models_and_probes(http_server: ServerThread, client: openai.OpenAI, bundle: Bundle) -> None:
    m = bundle.manifest
    assert [model.id for model in client.models.list()] == [m.name, f"{m.name}@{m.version}"]
    assert client.models.retrieve(m.name).owned_by == "streamrec-embedder"
    assert client.models.retrieve(f"{m.name}@{m.version}").id == f"{m.name}@{m.version}"
    assert call(http_server, "/healthz")[0] == 200
    assert call(http_server, "/readyz") == (200, {"status": "ready"})


def _error(status_body: tuple[int, dict[str, Any]], status: int, param: str | None = None) -> dict[str, Any]:
    got_status, body = status_body
    assert got_status == status, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return dict(error)


def test_bad_requests_are_400_naming_the_parameter(http_server: ServerThread, bundle: Bundle) -> None:
    name = bundle.manifest.name
    _error(call(http_server, "/v1/embeddings", {"model": name, "input": []}), 400, "input")
    _error(call(http_server, "/v1/embeddings", {"model": name, "input": [[1, 2, 3]]}), 400, "input[0]")
    _error(call(http_server, "/v1/embeddings", {"model": name, "input": ["ok", ""]}), 400, "input[1]")
    _error(
        call(http_server, "/v1/embeddings", {"model": name, "input": "x", "dimensions": 7}), 400, "dimensions"
    )
    bad_format = {"model": name, "input": "x", "encoding_format": "int8"}
    _error(call(http_server, "/v1/embeddings", bad_format), 400, "encoding_format")
    _error(call(http_server, "/v1/embeddings", raw=b"{not json"), 400, "body")
    too_many = {"model": name, "input": ["x"] * (http_server.config.max_texts_per_request + 1)}
    assert "max_texts_per_request" in _error(call(http_server, "/v1/embeddings", too_many), 400)["message"]


def test_unknown_model_is_404(http_server: ServerThread, client: openai.OpenAI) -> None:
    error = _error(
        call(http_server, "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}), 404
    )
    assert error["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("text-embedding-3-small")


def test_body_over_the_limit_is_413(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server(http_port=0, http_host="127.0.0.1", max_receive_message_bytes=4096)
    _error(call(srv, "/v1/embeddings", {"model": "", "input": "x" * 8000}), 413)


def test_api_keys_are_401_without_and_ok_with(
    start_server: Callable[..., ServerThread], bundle: Bundle
) -> None:
    srv = start_server(http_port=0, http_host="127.0.0.1", api_keys="k1,k2")
    body = {"model": bundle.manifest.name, "input": "x"}
    assert _error(call(srv, "/v1/embeddings", body), 401)["code"] == "invalid_api_key"
    _error(call(srv, "/v1/models", headers={"Authorization": "Bearer nope"}), 401)
    assert call(srv, "/v1/embeddings", body, headers={"Authorization": "Bearer k2"})[0] == 200
    assert call(srv, "/healthz")[0] == 200  # probes need no key
    with (
        openai.OpenAI(base_url=url(srv, "/v1"), api_key="wrong", max_retries=0) as c,
        pytest.raises(openai.AuthenticationError),
    ):
        c.embeddings.create(model=bundle.manifest.name, input="x")


def test_a_full_queue_is_429(bundle: Bundle) -> None:
    faults = Faults()
    config = make_config(
        workers=1,
        max_queued_items=8,
        max_texts_per_request=8,
        http_port=0,
        http_host="127.0.0.1",
        inline_infer_max_tokens=0,
        min_padding_efficiency=0.0,  # the first request (8 texts of mixed lengths) leaves the queue whole
    )
    srv = FaultServer(bundle, config, faults)
    faults.open.clear()  # the only worker blocks on its next batch until the test opens the gate
    try:
        with ThreadPoolExecutor(2) as pool:
            held = pool.submit(call, srv, "/v1/embeddings", {"model": "", "input": sample_texts(8, seed=1)})
            assert faults.waiting.acquire(timeout=10)
            queued = pool.submit(call, srv, "/v1/embeddings", {"model": "", "input": sample_texts(8, seed=2)})
            wait_until(
                lambda: sample(srv.metrics_url, "streamrec_embedder_queue_items") == 8, what="a full queue"
            )
            error = _error(call(srv, "/v1/embeddings", {"model": "", "input": ["one more"]}), 429)
            assert error["type"] == "rate_limit_exceeded"
            faults.open.set()
            assert held.result(timeout=30)[0] == queued.result(timeout=30)[0] == 200
    finally:
        faults.open.set()
        srv.stop()


def test_draining_is_503_and_not_ready(http_server: ServerThread, bundle: Bundle) -> None:
    http_server.running.gate.close()  # what SIGTERM does first
    _error(call(http_server, "/v1/embeddings", {"model": bundle.manifest.name, "input": "x"}), 503)
    assert call(http_server, "/readyz")[0] == 503
    assert call(http_server, "/healthz")[0] == 200


def test_requests_are_counted_with_the_grpc_code_names(http_server: ServerThread, bundle: Bundle) -> None:
    call(http_server, "/v1/embeddings", {"model": bundle.manifest.name, "input": ["a", "b"]})
    call(http_server, "/v1/embeddings", {"model": bundle.manifest.name, "input": []})
    m = http_server.metrics_url
    assert sample(m, "streamrec_embedder_requests_total", method="http.embeddings", code="OK") == 1
    assert (
        sample(m, "streamrec_embedder_requests_total", method="http.embeddings", code="INVALID_ARGUMENT") == 1
    )
    assert sample(m, "streamrec_embedder_items_total") == 2


def test_https_with_the_grpc_certificate_and_mtls(
    start_server: Callable[..., ServerThread], bundle: Bundle, tmp_path: Path
) -> None:
    ca, client_ca = CertificateAuthority(tmp_path, "server-ca"), CertificateAuthority(tmp_path, "client-ca")
    server_pem = ca.issue("server", "embedder.test", server=True)  # its SAN includes 127.0.0.1
    client_pem = client_ca.issue("client", "ranking-pipeline", server=False)
    srv = start_server(
        http_port=0,
        http_host="127.0.0.1",
        tls_cert_file=str(server_pem.cert),
        tls_key_file=str(server_pem.key),
        tls_client_ca_file=str(client_ca.pem.cert),
    )
    base = f"https://127.0.0.1:{srv.running.http_port}/v1"
    tls = ssl.create_default_context(cafile=str(ca.pem.cert))
    tls.load_cert_chain(str(client_pem.cert), str(client_pem.key))
    with openai.OpenAI(base_url=base, api_key="x", max_retries=0, http_client=httpx.Client(verify=tls)) as c:
        got = np.array(c.embeddings.create(model=bundle.manifest.name, input=["tls"]).data[0].embedding)
    with EmbedderClient(
        srv.address,
        security=ChannelSecurity.from_files(
            ca_file=str(ca.pem.cert), cert_file=str(client_pem.cert), key_file=str(client_pem.key)
        ),
    ) as grpc_client:
        assert np.abs(got - grpc_client.embed(["tls"])[0]).max() <= SAME
    no_client_cert = ssl.create_default_context(cafile=str(ca.pem.cert))
    with (
        openai.OpenAI(
            base_url=base, api_key="x", max_retries=0, http_client=httpx.Client(verify=no_client_cert)
        ) as c,
        pytest.raises(openai.APIConnectionError),
    ):
        c.embeddings.create(model=bundle.manifest.name, input=["no client certificate"])


def test_the_embedding_cache_serves_both_fronts(
    start_server: Callable[..., ServerThread], bundle: Bundle
) -> None:
    srv = start_server(http_port=0, http_host="127.0.0.1", embedding_cache_mb=4.0)
    texts = ["cached once over gRPC", "and again"]
    from_grpc = grpc_vectors(srv, texts)
    status, body = call(srv, "/v1/embeddings", {"model": bundle.manifest.name, "input": texts})
    assert status == 200
    assert np.abs(np.array([d["embedding"] for d in body["data"]]) - from_grpc).max() <= SAME
    assert sample(srv.metrics_url, "streamrec_embedder_cache_hits_total") >= len(texts)


def test_the_cache_extension_field_bypasses_the_cache(
    start_server: Callable[..., ServerThread], bundle: Bundle
) -> None:
    srv = start_server(http_port=0, http_host="127.0.0.1", embedding_cache_mb=4.0)
    body = {"model": bundle.manifest.name, "input": ["bypassed over HTTP", "and its neighbour"]}

    def counters() -> tuple[float, float]:
        m, p = srv.metrics_url, "streamrec_embedder_cache_"
        return sample(m, p + "hits_total"), sample(m, p + "misses_total")

    status, into_empty = call(srv, "/v1/embeddings", {**body, "cache": False})
    assert status == 200 and counters() == (0, 0)
    status, filled = call(srv, "/v1/embeddings", body)
    assert status == 200 and counters() == (0, 2)
    status, bypassed = call(srv, "/v1/embeddings", {**body, "cache": False})
    assert status == 200 and counters() == (0, 2)
    assert bypassed["data"] == filled["data"] == into_empty["data"]
    _error(call(srv, "/v1/embeddings", {**body, "cache": "no"}), 400, "cache")


def test_model_selects_the_version_as_grpc_does(
    start_server: Callable[..., ServerThread],
    bundle: Bundle,
    bundle_v2: Bundle,
    reference: EmbeddingEngine,
    reference_v2: EmbeddingEngine,
) -> None:
    srv = start_server([bundle, bundle_v2], http_port=0, http_host="127.0.0.1")
    name = bundle.manifest.name
    texts = ["a red guitar on stage", "space documentary about black holes"]
    v1, v2 = embed_reference(reference, texts), embed_reference(reference_v2, texts)
    assert np.abs(v1 - v2).max() > 0.1  # two spaces: a vector from the wrong version cannot pass
    for spec, want, expected in (
        ("", bundle_v2, v2),  # the default model at its highest version
        (name, bundle_v2, v2),
        (f"{name}@{bundle.manifest.version}", bundle, v1),  # pinned
    ):
        status, body = call(srv, "/v1/embeddings", {"model": spec, "input": texts})
        assert status == 200 and body["model"] == f"{name}@{want.manifest.version}", (spec, body)
        np.testing.assert_allclose(np.array([d["embedding"] for d in body["data"]]), expected, atol=1e-5)
    error = _error(call(srv, "/v1/embeddings", {"model": f"{name}@9.9.9", "input": "x"}), 404)
    assert "9.9.9" in error["message"] and error["code"] == "model_not_found"
