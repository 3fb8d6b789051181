"""Security: optional TLS and mTLS (throwaway certificates made here), optional API keys from a file or the
environment (UNAUTHENTICATED otherwise, health stays open), and both through the Python clients.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from embedder.channel import ChannelSecurity
from embedder.cli import main as cli_main
from embedder.client import AsyncEmbedderClient, ClientOptions, EmbedderClient
from embedder.config import load_config
from embedder.core.bundle import Bundle
from embedder.core.engine import EmbeddingEngine
from embedder.grpc import auth
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.certs import CertificateAuthority
from tests.hardening import SECRET, fault_server, health_status, run_cli, sample, server_process, token_of
from tests.support import ServerThread, embed_reference

ONE_TRY = ClientOptions(timeout_s=5, max_attempts=1)
TEXTS = ["a text sent over TLS", "and another"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("pki")
    ca, client_ca, rogue = (CertificateAuthority(out, n) for n in ("server-ca", "client-ca", "rogue-ca"))
    return SimpleNamespace(
        ca=ca.pem,
        client_ca=client_ca.pem,
        rogue_ca=rogue.pem,
        server=ca.issue("server", "embedder.test", server=True),
        client=client_ca.issue("client", "ranking-pipeline", server=False),
        rogue_client=rogue.issue("rogue-client", "ranking-pipeline", server=False),
    )


def refused(call: Callable[[], Any], code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err: grpc.RpcError = info.value  # type: ignore[assignment]
    assert err.code() == code, err.details()  # type: ignore[attr-defined]
    return err


def embed_with(address: str, security: ChannelSecurity) -> np.ndarray[Any, Any]:
    with EmbedderClient([address], ONE_TRY, security=security) as client:
        return client.embed(TEXTS)


def aembed_with(address: str, security: ChannelSecurity) -> np.ndarray[Any, Any]:
    async def run() -> np.ndarray[Any, Any]:
        async with AsyncEmbedderClient([address], ONE_TRY, security=security) as client:
            return await client.embed(TEXTS)

    return asyncio.run(run())


def test_tls(
    start_server: Callable[..., ServerThread], pki: SimpleNamespace, reference: EmbeddingEngine
) -> None:
    srv = start_server(tls_cert_file=str(pki.server.cert), tls_key_file=str(pki.server.key))
    trusted = ChannelSecurity.from_files(ca_file=str(pki.ca.cert))
    expected = embed_reference(reference, TEXTS)
    np.testing.assert_allclose(embed_with(srv.address, trusted), expected, atol=1e-5)
    np.testing.assert_allclose(aembed_with(srv.address, trusted), expected, atol=1e-5)
    # The certificate's DNS name, for callers that reach the server by another address.
    named = ChannelSecurity.from_files(ca_file=str(pki.ca.cert), server_name="embedder.test")
    assert embed_with(srv.address, named).shape == expected.shape
    # Plaintext, or a CA that did not sign the server's certificate: no connection.
    refused(lambda: embed_with(srv.address, ChannelSecurity()), grpc.StatusCode.UNAVAILABLE)
    stranger = ChannelSecurity.from_files(ca_file=str(pki.rogue_ca.cert))
    refused(lambda: embed_with(srv.address, stranger), grpc.StatusCode.UNAVAILABLE)
    # The container health probe speaks TLS too.
    assert cli_main(["health", "--address", srv.address, "--tls-ca-file", str(pki.ca.cert)]) == 0


def test_mtls_needs_a_client_certificate_from_the_client_ca(
    start_server: Callable[..., ServerThread], pki: SimpleNamespace
) -> None:
    srv = start_server(
        tls_cert_file=str(pki.server.cert),
        tls_key_file=str(pki.server.key),
        tls_client_ca_file=str(pki.client_ca.cert),
    )

    def security(client: Any) -> ChannelSecurity:
        files = {"cert_file": str(client.cert), "key_file": str(client.key)} if client else {}
        return ChannelSecurity.from_files(ca_file=str(pki.ca.cert), **files)

    assert embed_with(srv.address, security(pki.client)).shape[0] == len(TEXTS)
    assert aembed_with(srv.address, security(pki.client)).shape[0] == len(TEXTS)
    refused(lambda: embed_with(srv.address, security(None)), grpc.StatusCode.UNAVAILABLE)
    refused(lambda: embed_with(srv.address, security(pki.rogue_client)), grpc.StatusCode.UNAVAILABLE)


@pytest.fixture
def keyed_server(bundle: Bundle, tmp_path: Path) -> Iterator[ServerThread]:
    """API keys from a file (with a comment line) and from the environment."""
    keys = tmp_path / "keys.txt"
    keys.write_text("# ranking pipeline\nkey-from-file\n")
    flags = {"host": "127.0.0.1", "port": 0, "metrics_port": 0, "metrics_host": "127.0.0.1"}
    config = load_config(
        {**flags, "api_keys_file": str(keys)}, env={"STREAMREC_EMBEDDER_API_KEYS": "key-from-env"}
    )
    srv = ServerThread(bundle, config)
    yield srv
    srv.stop()


def test_api_keys(keyed_server: ServerThread) -> None:
    srv = keyed_server
    with grpc.insecure_channel(srv.address) as ch:
        stub = pb_grpc.EmbedderStub(ch)
        request = pb.EmbedRequest(texts=["keyed"])
        for metadata in (
            None,
            [("authorization", "Bearer wrong")],
            [("authorization", "Basic key-from-env")],
        ):
            err = refused(
                lambda m=metadata: stub.Embed(request, timeout=5, metadata=m), grpc.StatusCode.UNAUTHENTICATED
            )  # type: ignore[misc]
            assert "authorization: Bearer <key>" in err.details()  # type: ignore[attr-defined]
        for header in ("Bearer key-from-file", "bearer key-from-env"):
            assert stub.Embed(request, timeout=5, metadata=[("authorization", header)]).count == 1
        # Every method but health needs a key.
        refused(
            lambda: stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5), grpc.StatusCode.UNAUTHENTICATED
        )
        refused(lambda: list(stub.EmbedStream(iter([request]), timeout=5)), grpc.StatusCode.UNAUTHENTICATED)
        reflect = reflection_pb2_grpc.ServerReflectionStub(ch)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        refused(
            lambda: list(reflect.ServerReflectionInfo(iter([ask]), timeout=5)),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        assert health_status(ch) == "SERVING"
    assert (
        sample(srv.metrics_url, "streamrec_embedder_requests_total", method="Embed", code="UNAUTHENTICATED")
        == 3
    )
    # The clients send the key on every call (GetModelInfo first, then Embed); a wrong one is not retried.
    assert embed_with(srv.address, ChannelSecurity(api_key="key-from-env")).shape[0] == len(TEXTS)
    assert aembed_with(srv.address, ChannelSecurity(api_key="key-from-file")).shape[0] == len(TEXTS)
    refused(lambda: embed_with(srv.address, ChannelSecurity(api_key="nope")), grpc.StatusCode.UNAUTHENTICATED)


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    interceptor = auth.ApiKeyInterceptor(["first", "second", "third"])
    assert interceptor.authorized("first") and len(calls) == 3  # no early exit on a match
    assert not interceptor.authorized("firs") and len(calls) == 6
    assert not interceptor.authorized(None) and len(calls) == 6


def test_cli_server_with_tls_and_a_key_from_the_environment(bundle: Bundle, pki: SimpleNamespace) -> None:
    flags = ["--tls-cert-file", str(pki.server.cert), "--tls-key-file", str(pki.server.key)]
    with server_process(bundle, *flags, env={"STREAMREC_EMBEDDER_API_KEYS": "k1,k2"}) as (proc, port, _lines):
        address = f"127.0.0.1:{port}"
        tls = {"ca_file": str(pki.ca.cert)}
        assert embed_with(address, ChannelSecurity.from_files(**tls, api_key="k2")).shape[0] == len(TEXTS)
        keyless = ChannelSecurity.from_files(**tls)
        refused(lambda: embed_with(address, keyless), grpc.StatusCode.UNAUTHENTICATED)
        assert cli_main(["health", "--address", address, "--tls-ca-file", str(pki.ca.cert)]) == 0  # open
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_an_empty_key_file_stops_start_up(bundle: Bundle, tmp_path: Path) -> None:
    # An empty file must not silently turn authentication off.
    empty = tmp_path / "keys.txt"
    empty.write_text("# no keys yet\n")
    code, lines, _wall, _cpu = run_cli("serve", "--bundle", str(bundle.path), "--api-keys-file", str(empty))
    assert code == 1 and len(lines) == 1 and "holds no keys" in lines[0], lines


MARK = "quokka-marmalade-7341"  # distinctive: it can only reach a log by way of a request


def _send_marked_calls(address: str) -> None:
    """OK calls, refused calls and a stream, all carrying MARK in their texts."""
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.EmbedderStub(ch)
        assert stub.Embed(pb.EmbedRequest(texts=[f"{MARK} fine"]), timeout=10).count == 1
        bad = [
            pb.EmbedRequest(texts=[f"{MARK} " + "word " * 600], truncate=False),
            pb.EmbedRequest(texts=[MARK], dimensions=7),
            pb.EmbedRequest(texts=[MARK, ""]),
            pb.EmbedRequest(texts=[MARK], request_id="bad\nid"),
        ]
        for request in bad:
            refused(lambda r=request: stub.Embed(r, timeout=10), grpc.StatusCode.INVALID_ARGUMENT)  # type: ignore[misc]
        stream = [pb.EmbedRequest(texts=[MARK], request_id="s1"), pb.EmbedRequest(texts=[MARK], dimensions=7)]
        assert len(list(stub.EmbedStream(iter(stream), timeout=10))) == 2


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_texts_are_not_logged(bundle: Bundle, level: str) -> None:
    # INFO is the default; not even DEBUG logs a text.
    with server_process(bundle, "--log-level", level) as (proc, port, lines):
        _send_marked_calls(f"127.0.0.1:{port}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    log = "".join(lines)
    assert "serving" in log and "requests served" in log  # the log really was captured
    assert "INVALID_ARGUMENT=" in log
    assert MARK not in log


def test_texts_are_not_logged_when_inference_fails(bundle: Bundle, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with fault_server(bundle, workers=1) as srv, grpc.insecure_channel(srv.address) as ch:
        srv.faults.fail_token = token_of(srv, "volcano")
        request = pb.EmbedRequest(texts=[f"volcano {MARK}"], request_id="leak-check")
        refused(lambda: pb_grpc.EmbedderStub(ch).Embed(request, timeout=10), grpc.StatusCode.INTERNAL)
    assert "leak-check" in caplog.text and SECRET in caplog.text  # the failure was logged, with its trace
    assert MARK not in caplog.text
