"""Client-side balancing over two real server processes: SIGKILL one mid-run, no call fails, the survivor
takes the load (counted on each server's own /metrics)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from embedder.client import ClientOptions, EmbedderClient
from embedder.core.bundle import Bundle
from embedder.core.engine import EmbeddingEngine
from tests.deploy_support import items_served, processes, start_server
from tests.support import sample_texts

CALLERS = 4
CALLS_PER_CALLER = 60
TEXTS_PER_CALL = 8


def test_kill_one_replica_mid_run(bundle: Bundle, reference: EmbeddingEngine, tmp_path: Path) -> None:
    texts = sample_texts(TEXTS_PER_CALL * 16, seed=21)
    calls = [texts[i : i + TEXTS_PER_CALL] for i in range(0, len(texts), TEXTS_PER_CALL)]
    expected = [reference.embed_in_process(c) for c in calls]
    options = ClientOptions(timeout_s=30, backoff_initial_s=0.01, backoff_max_s=0.1, max_attempts=4)
    with processes() as started:
        doomed, survivor = (start_server(bundle.path, tmp_path / f"{n}.log", "--workers", "1") for n in "ab")
        started += [doomed, survivor]
        killed = threading.Event()
        done = [0] * CALLERS
        after_kill: list[int] = [0] * CALLERS  # texts of calls started after the kill
        errors: list[BaseException] = []
        with EmbedderClient([doomed.address, survivor.address], options) as client:

            def caller(k: int) -> None:
                try:
                    for i in range(CALLS_PER_CALLER):
                        started_after_kill = killed.is_set()
                        which = (k * CALLS_PER_CALLER + i) % len(calls)
                        got = client.embed(calls[which])
                        np.testing.assert_allclose(got, expected[which], atol=1e-5)
                        done[k] += 1
                        after_kill[k] += TEXTS_PER_CALL if started_after_kill else 0
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=caller, args=(k,)) for k in range(CALLERS)]
            for t in threads:
                t.start()
            # Kill while calls are in flight, a third of the way in.
            while sum(done) < CALLERS * CALLS_PER_CALLER // 3 and not errors:
                time.sleep(0.005)
            doomed_served = items_served(doomed)
            survivor_before = items_served(survivor)
            doomed.kill()
            killed.set()
            for t in threads:
                t.join(120)
        assert not errors, f"{len(errors)} calls failed, first: {errors[0]!r}"
        survivor_gain = items_served(survivor) - survivor_before
    total = CALLERS * CALLS_PER_CALLER * TEXTS_PER_CALL
    assert sum(done) == CALLERS * CALLS_PER_CALLER
    assert doomed_served > 0, "round-robin should have sent the doomed replica its share before the kill"
    # The kill came a third of the way in, so most calls started after it; every one of them was served by
    # the survivor (retried there when it first hit the dead address). The doomed replica's own count is
    # gone with it (it may have answered a few more calls between the scrape and the kill).
    assert sum(after_kill) > total // 3
    assert survivor_gain >= sum(after_kill)
