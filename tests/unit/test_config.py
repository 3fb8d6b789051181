"""Config precedence (flag > env > default), coercion and validation."""

from __future__ import annotations

import os

import pytest

from embedder.config import DEFAULT_BUNDLE, ServerConfig, load_config
from embedder.errors import ConfigError


def test_defaults_without_flags_or_env() -> None:
    cfg = load_config({}, env={})
    assert cfg == ServerConfig()
    assert cfg.port == 50051
    assert cfg.metrics_port == 9000
    assert cfg.bundle == DEFAULT_BUNDLE


def test_env_overrides_default_and_flag_overrides_env() -> None:
    env = {"STREAMREC_EMBEDDER_MAX_WAIT_MS": "7.5", "STREAMREC_EMBEDDER_PORT": "6000"}
    cfg = load_config({"port": 7000, "max_batch_items": None}, env=env)
    assert cfg.max_wait_ms == 7.5  # env beat the default
    assert cfg.port == 7000  # the flag beat env
    assert cfg.max_batch_items == ServerConfig().max_batch_items  # None means "flag not given"


def test_env_is_read_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_EMBEDDER_WORKERS", "3")
    assert load_config().workers == 3
    monkeypatch.setenv("STREAMREC_EMBEDDER_WORKERS", "1")
    assert load_config().workers == 1


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="STREAMREC_EMBEDDER_MAX_BATCH_ITEMS"):
        load_config(env={"STREAMREC_EMBEDDER_MAX_BATCH_ITEMS": "lots"})


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        ({"max_batch_items": 0}, "max_batch_items"),
        ({"max_wait_ms": -1.0}, "max_wait_ms"),
        ({"port": 70000}, "port"),
        ({"max_texts_per_request": 100, "max_queued_items": 10}, "max_texts_per_request"),
        ({"log_level": "LOUD"}, "log_level"),  # was logging's ValueError traceback at start
        ({"processes": 0}, "processes"),
    ],
)
def test_invalid_values_are_refused(flags: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        load_config(flags, env={})


def test_unknown_flag_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_batch_size"):
        load_config({"max_batch_size": 3}, env={})


def test_workers_zero_means_one_per_core() -> None:
    assert ServerConfig(workers=0).resolved_workers() >= 1
    assert ServerConfig(workers=3).resolved_workers() == 3


def test_log_level_takes_any_case() -> None:
    assert load_config({"log_level": "warning"}, env={}).log_level == "warning"


def test_each_of_several_processes_gets_its_share_and_a_private_metrics_port() -> None:
    from embedder.grpc.processes import process_config

    config = ServerConfig(processes=2, embedding_cache_mb=64.0, metrics_port=9000, http_port=-1)
    one = process_config(config, 1, port=50051, http_port=-1)
    assert (one.processes, one.port, one.embedding_cache_mb) == (1, 50051, 32.0)
    assert one.workers == max(1, (os.cpu_count() or 1) // 2)
    assert (one.metrics_host, one.metrics_port) == ("127.0.0.1", 0)  # the supervisor serves 9000
    assert process_config(ServerConfig(processes=2, workers=3), 0, 1, -1).workers == 3  # as set
    assert process_config(ServerConfig(processes=2, metrics_port=-1), 0, 1, -1).metrics_port == -1


def test_the_supervisor_reserves_a_port_on_every_address_and_refuses_a_held_one() -> None:
    import socket

    from embedder.grpc.processes import reserve_port

    held = reserve_port("localhost", 0, dual_stack=True)  # 127.0.0.1, and ::1 where the host has it
    try:
        ports = {s.getsockname()[1] for s in held}
        assert len(ports) == 1 and ports != {0}
    finally:
        for s in held:
            s.close()
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot bind 127.0.0.1:{port}: Address already in use"):
            reserve_port("127.0.0.1", port, dual_stack=True)
