"""`streamrec-embedder info --address` asks a running server (GetModelInfo) instead of reading a bundle."""

from __future__ import annotations

import json
import socket

import pytest

from embedder.cli import main
from embedder.core.bundle import Bundle
from tests.support import ServerThread


def test_info_address_prints_the_servers_model_and_limits(
    server: ServerThread, bundle: Bundle, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", "--address", server.address]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["address"] == server.address
    assert (info["name"], info["version"]) == (bundle.manifest.name, bundle.manifest.version)
    assert info["dim"] == bundle.manifest.dim and info["sha256"] == bundle.manifest.sha256
    assert info["limits"]["max_texts_per_request"] == server.config.max_texts_per_request
    assert info["limits"]["max_wait_ms"] == server.config.max_wait_ms
    assert "ENCODING_FLOAT32" in info["encodings"]


def test_info_address_without_a_server_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    assert main(["info", "--address", address, "--timeout-s", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"streamrec-embedder: error: {address}: UNAVAILABLE") and err.count("\n") == 1
