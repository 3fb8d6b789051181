"""Rollouts without a restart, under load: a new version is added (and becomes the default), then the old
one is removed, while closed-loop callers keep calling. Unpinned callers never fail and move from the
old version to the new one and never back; pinned callers keep the old version until it is removed,
then get FAILED_PRECONDITION naming what remains; every vector is the one its labelled version gives
(checked against each bundle's in-process output). And SIGHUP re-scans the repository of a real
`streamrec-embedder serve` process.

Bounded for a shared 2-core machine: 8 callers, each phase lasts until every caller has made a few
calls in it. The long version (64 callers, 60 s) is scripts/rollout_load.py.
"""

from __future__ import annotations

import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from embedder.client import decode
from embedder.core.bundle import Bundle
from embedder.core.engine import EmbeddingEngine
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.hardening import server_process, wait_until
from tests.support import ServerThread, add_version, embed_reference, make_repository, sample_texts

UNPINNED, PINNED = 6, 2
CALLS_PER_PHASE = 5


@dataclass
class Caller:
    """One closed-loop caller: what it got back, in order."""

    model: str
    versions: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)

    def calls(self) -> int:
        return len(self.versions) + len(self.errors)


def _loop(
    caller: Caller, address: str, texts: list[str], expected: dict[str, np.ndarray], stop: threading.Event
) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.EmbedderStub(channel)
        i = 0
        while not stop.is_set():
            text = [texts[i % len(texts)]]
            try:
                response = stub.Embed(pb.EmbedRequest(texts=text, model=caller.model), timeout=30)
            except grpc.RpcError as exc:
                caller.errors.append((exc.code().name, exc.details() or ""))
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    return  # a pinned caller told its version is gone stops (it would re-pin)
                continue
            version = response.model_version
            caller.versions.append(version)
            want = expected[version][i % len(texts)]
            if not np.allclose(decode(response)[0], want, atol=1e-5):
                caller.mismatches.append(f"call {i}: vector is not {version}'s")
            i += 1


def test_rollout_under_load_fails_no_unpinned_call_and_mislabels_no_vector(
    start_server: Callable[..., ServerThread],
    *,
    bundle: Bundle,
    bundle_v2: Bundle,
    reference: EmbeddingEngine,
    reference_v2: EmbeddingEngine,
    tmp_path: Path,
) -> None:
    old, new = bundle.manifest.version, bundle_v2.manifest.version
    texts = sample_texts(16, seed=3)
    expected = {old: embed_reference(reference, texts), new: embed_reference(reference_v2, texts)}
    repo = make_repository(tmp_path / "models", bundle)
    srv = start_server(model_repository=str(repo), max_wait_ms=1)
    pinned_spec = f"{bundle.manifest.name}@{old}"
    callers = [Caller("") for _ in range(UNPINNED)] + [Caller(pinned_spec) for _ in range(PINNED)]
    unpinned = callers[:UNPINNED]
    stop = threading.Event()
    threads = [
        threading.Thread(target=_loop, args=(c, srv.address, texts, expected, stop), daemon=True)
        for c in callers
    ]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: all(c.calls() >= CALLS_PER_PHASE for c in callers), 60, "calls on the old version")
        add_version(repo, bundle_v2)
        added = srv.call(srv.running.reload())
        assert added.added == [f"{bundle.manifest.name}@{new}"] and not added.errors
        marks = [c.versions.count(new) for c in unpinned]
        wait_until(
            lambda: all(
                c.versions.count(new) >= m + CALLS_PER_PHASE for c, m in zip(unpinned, marks, strict=True)
            ),
            60,
            "unpinned calls on the new version",
        )
        shutil.rmtree(repo / bundle.manifest.name / old)
        removed = srv.call(srv.running.reload())
        assert removed.removed == [pinned_spec]
        counts = [c.calls() for c in unpinned]
        wait_until(
            lambda: (
                all(c.calls() >= n + CALLS_PER_PHASE for c, n in zip(unpinned, counts, strict=True))
                and all(c.errors for c in callers[UNPINNED:])
            ),
            60,
            "calls after the removal",
        )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    for c in unpinned:
        assert c.errors == [] and c.mismatches == []
        first_new = c.versions.index(new)
        assert set(c.versions[:first_new]) <= {old} and set(c.versions[first_new:]) == {new}  # never back
    for c in callers[UNPINNED:]:
        assert c.mismatches == [] and set(c.versions) == {old}
        assert [code for code, _ in c.errors] == ["FAILED_PRECONDITION"]
        assert f"['{new}']" in c.errors[0][1]


def test_sighup_rescans_the_model_repository(bundle: Bundle, bundle_v2: Bundle, tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "models", bundle)
    with server_process(bundle, "--model-repository", str(repo)) as (proc, port, lines):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.EmbedderStub(channel)

            def loaded() -> list[str]:
                info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
                return [m.version for m in info.models]

            assert loaded() == ["0.0.0"]
            add_version(repo, bundle_v2)
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: loaded() == ["0.0.0", "1.0.0"], 60, "the new version after SIGHUP")
            assert (
                stub.Embed(pb.EmbedRequest(texts=["after the reload"]), timeout=30).model_version == "1.0.0"
            )
            assert proc.poll() is None  # SIGHUP reloads; it does not stop the server
        assert any("reload: added" in line for line in lines)
