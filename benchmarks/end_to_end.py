"""Mode (c), end to end: real `streamrec-embedder serve` subprocesses driven over gRPC.

All models' servers run side by side for the whole phase (an idle server costs no CPU: ORT threads do not
spin), so the rounds can interleave models without paying a server start per measurement.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from benchmarks.loadgen import LoadResult, closed_loop, open_loop
from benchmarks.serving import ServerProcess, server_process


@contextmanager
def running_servers(bundles: Mapping[str, Path]) -> Iterator[dict[str, ServerProcess]]:
    """One server per model with the shipped default config; all stopped on exit."""
    with ExitStack() as stack:
        yield {key: stack.enter_context(server_process(path)) for key, path in bundles.items()}


def closed(
    server: ServerProcess, requests: Sequence[list[str]], concurrency: int, seconds: float, warmup_s: float
) -> LoadResult:
    """A closed-loop run with the server's CPU ms per item (robust to other tenants of the machine)."""
    return closed_loop(server.address, requests, concurrency, seconds, warmup_s, cpu_pid=server.proc.pid)


def open_rate(
    server: ServerProcess,
    requests: Sequence[list[str]],
    items_per_s: float,
    *,
    min_seconds: float,
    max_seconds: float,
    min_requests: int,
) -> LoadResult:
    """Poisson arrivals offering `items_per_s`; runs long enough for `min_requests` (within the bounds)."""
    request_texts = len(requests[0])
    rate = items_per_s / request_texts
    seconds = min(max_seconds, max(min_seconds, min_requests / rate))
    return open_loop(server.address, requests, rate, duration_s=seconds)
