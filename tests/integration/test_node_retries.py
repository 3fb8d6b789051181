"""The Node client retries as the Python client does, against real servers (port 0): the same codes and
defaults, a call refused by a draining replica (UNAVAILABLE, what SIGTERM's first step gives every new
call) is retried on the next one, nothing else is retried, and no retry starts after the call's own
deadline. Each server counts on its own /metrics what it answered, so every retry is seen from both
sides. Also the Node client's `cache: false` (the cache bypass on the wire).

Needs Node.js and `make node-deps` (the `requires_node` marker skips without them; CI installs both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest

from embedder.client import RETRYABLE, ClientOptions, EmbedderClient
from tests.hardening import sample
from tests.support import ServerThread, run_node, sample_texts

pytestmark = pytest.mark.requires_node

REQUESTS = "streamrec_embedder_requests_total"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
TEXTS = sample_texts(6, seed=11)


def node_embed(addresses: list[str], options: dict[str, Any], texts: list[str] = TEXTS) -> dict[str, Any]:
    """One `embed` through the Node client (clients/node/retry_check.mjs): what it got and its retries."""
    return run_node("retry_check.mjs", payload={"addresses": addresses, "texts": texts, "options": options})


def embeds(srv: ServerThread, code: str) -> float:
    return sample(srv.metrics_url, REQUESTS, method="Embed", code=code)


@pytest.fixture
def drained(start_server: Callable[..., ServerThread]) -> ServerThread:
    """A replica that is draining: its gate is closed (SIGTERM's first step), so every new call gets
    UNAVAILABLE before any work is accepted."""
    srv = start_server()
    srv.running.gate.close()
    return srv


def test_the_node_client_has_the_python_clients_policy(drained: ServerThread) -> None:
    policy = node_embed([drained.address], {"maxAttempts": 1})["policy"]
    assert sorted(policy["retryable"]) == sorted(code.value[0] for code in RETRYABLE)
    python = ClientOptions()
    assert policy["defaults"] == {
        "deadlineMs": python.timeout_s * 1000,
        "maxAttempts": python.max_attempts,
        "backoffInitialMs": python.backoff_initial_s * 1000,
        "backoffMaxMs": python.backoff_max_s * 1000,
    }


def test_a_call_a_draining_replica_refuses_is_retried_on_the_next(
    drained: ServerThread, start_server: Callable[..., ServerThread]
) -> None:
    live = start_server()
    got = node_embed([drained.address, live.address], {"backoffInitialMs": 10})
    assert got["ok"], got
    [retry] = got["retries"]
    assert (retry["method"], retry["attempt"], retry["code"]) == ("Embed", 0, UNAVAILABLE)
    assert retry["address"] == drained.address and 0 <= retry["pauseMs"] <= 10
    assert (embeds(drained, "UNAVAILABLE"), embeds(live, "OK")) == (1, 1)
    # The same call with retries off fails: the retry above is what saved it.
    once = node_embed([drained.address, live.address], {"maxAttempts": 1})
    assert (once["ok"], once["code"], once["retries"]) == (False, UNAVAILABLE, [])
    assert (embeds(drained, "UNAVAILABLE"), embeds(live, "OK")) == (2, 1)
    with EmbedderClient(live.address) as python:
        np.testing.assert_allclose(np.array(got["rows"], dtype=np.float32), python.embed(TEXTS), atol=1e-6)


def test_retries_stop_after_max_attempts(drained: ServerThread) -> None:
    got = node_embed([drained.address], {"maxAttempts": 3, "backoffInitialMs": 1})
    assert (got["ok"], got["code"]) == (False, UNAVAILABLE)
    assert [r["attempt"] for r in got["retries"]] == [0, 1]
    assert embeds(drained, "UNAVAILABLE") == 3


def test_no_retry_starts_after_the_calls_own_deadline(drained: ServerThread) -> None:
    """Attempts without limit, short pauses: the deadline alone ends the call, and within it."""
    deadline_ms = 800
    options = {"maxAttempts": 10_000, "backoffInitialMs": 20, "backoffMaxMs": 40, "deadlineMs": deadline_ms}
    got = node_embed([drained.address], options)
    assert not got["ok"]
    assert got["code"] in {UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED.value[0]}
    assert len(got["retries"]) >= 2
    for retry in got["retries"]:
        assert retry["at_ms"] + retry["pauseMs"] < deadline_ms + 50, retry  # Date.now() has 1 ms steps
    # Loose, for a loaded machine: without the deadline rule 10,000 attempts would take minutes.
    assert got["elapsed_ms"] < deadline_ms + 2000
    # Every attempt reached the server; the last may have run out of time on its way back.
    assert len(got["retries"]) <= embeds(drained, "UNAVAILABLE") <= len(got["retries"]) + 1


def test_other_errors_are_not_retried(start_server: Callable[..., ServerThread]) -> None:
    live = start_server()
    got = node_embed([live.address, live.address], {"backoffInitialMs": 1}, texts=[])
    assert (got["ok"], got["code"], got["retries"]) == (False, grpc.StatusCode.INVALID_ARGUMENT.value[0], [])
    assert embeds(live, "INVALID_ARGUMENT") == 1


def test_cache_false_from_node_bypasses_the_servers_cache(start_server: Callable[..., ServerThread]) -> None:
    live = start_server(embedding_cache_mb=4)
    hits, misses = "streamrec_embedder_cache_hits_total", "streamrec_embedder_cache_misses_total"
    bypassed = node_embed([live.address], {"cache": False})
    assert bypassed["ok"] and (sample(live.metrics_url, hits), sample(live.metrics_url, misses)) == (0, 0)
    cached = node_embed([live.address], {})
    assert cached["ok"] and sample(live.metrics_url, misses) == len(TEXTS)
    assert bypassed["rows"] == cached["rows"]
