"""`streamrec-bench overhead`: where the server's time goes on one bundle, (a) (b) (c) in one run.

(c) the server: a `serve` subprocess with `--batch-log`, driven by N closed-loop gRPC callers of 32-text
    requests: items/s, the server's CPU ms per item, and the padding efficiency of the batches it formed;
(a) the model alone on exactly those batches, replayed from the log in the server's layout (one
    single-threaded session per worker, each on its own thread, padding included as the worker pads);
(b) the model alone on the same token rows in ideal batches: sorted by length, `ideal_batch` rows each;
plus the tokenizer alone on the same texts (the server's `TextTokenizer`, as many threads as its pool).

(c) / (a) is what the runtime around the model costs; (a) / (b) is what the server's batch shapes
cost; server CPU per item / (tokenizer + (b)) CPU per item is the issue's "within 2x" figure.
(d) the same server with a null model (zeros, no arithmetic) under the same callers: the runtime alone.
For (c) and (d) the callers' p50 is set beside the server's own (the responses' timing): the difference
is time spent in gRPC, before the handler starts or after it answers. One run,
one machine: absolute figures swing 2-4x between machines (the CPU flags are in the output).
"""

from __future__ import annotations

import itertools
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import environment
from benchmarks.inputs import Inputs, requests_of
from benchmarks.loadgen import Window, closed_loop, cpu_s
from benchmarks.serving import server_process
from embedder.config import ServerConfig
from embedder.core.batch_log import read_batch_log
from embedder.core.bundle import load_bundle
from embedder.core.session import ATTENTION_MASK, INPUT_IDS, OUTPUT, make_session
from embedder.core.tokenizer import TextTokenizer, pad_batch

Rows = list[list[int]]


@dataclass(frozen=True)
class Rate:
    """Items per second (wall) and CPU ms per item of this process over one measurement."""

    items_per_s: float
    cpu_ms_per_item: float

    def to_dict(self) -> dict[str, float]:
        return {"items_per_s": self.items_per_s, "cpu_ms_per_item": self.cpu_ms_per_item}


def padding_efficiency(batches: Sequence[Rows]) -> float:
    """Real tokens / padded tokens (longest row x rows, per batch) over all batches."""
    real = sum(len(r) for b in batches for r in b)
    padded = sum(max(len(r) for r in b) * len(b) for b in batches)
    return real / padded if padded else 0.0


def ideal_batches(batches: Sequence[Rows], size: int) -> list[Rows]:
    """The same rows sorted by length and cut into batches of `size`: the least padding possible."""
    rows = sorted((r for b in batches for r in b), key=len)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _threaded(work: Callable[[int], int], threads: int) -> Rate:
    """Run `work(thread index) -> items` on `threads` threads at once; rate over all of them."""
    done = [0] * threads
    cpu0, start = cpu_s(), time.perf_counter()

    def run(i: int) -> None:
        done[i] = work(i)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall, cpu = time.perf_counter() - start, cpu_s() - cpu0
    items = sum(done)
    return Rate(items / wall, 1000.0 * cpu / items if items else 0.0)


def replay(model_path: Path, batches: Sequence[Rows], pad_id: int, workers: int, seconds: float) -> Rate:
    """Each worker thread takes the next batch (in logged order, cycling) and pads and runs it, like the
    server's workers, until `seconds` have passed and every batch ran at least once."""
    sessions = [make_session(model_path, 1) for _ in range(workers)]
    for session, batch in zip(sessions, itertools.cycle(batches), strict=False):
        ids, mask = pad_batch(batch, pad_id)
        session.run([OUTPUT], {INPUT_IDS: ids, ATTENTION_MASK: mask})  # first-run allocations
    ticket = itertools.count()  # next() is atomic under the GIL: each batch index goes to one thread
    stop_at = time.perf_counter() + seconds

    def work(i: int) -> int:
        items = 0
        while (k := next(ticket)) < len(batches) or time.perf_counter() < stop_at:
            batch = batches[k % len(batches)]
            ids, mask = pad_batch(batch, pad_id)
            sessions[i].run([OUTPUT], {INPUT_IDS: ids, ATTENTION_MASK: mask})
            items += len(batch)
        return items

    return _threaded(work, workers)


def tokenize_rate(
    tokenizer: TextTokenizer, requests: Sequence[list[str]], threads: int, seconds: float
) -> Rate:
    """The server's tokenizer on the request texts, `threads` at once (its pool), for `seconds`."""
    ticket = itertools.count()
    stop_at = time.perf_counter() + seconds

    def work(i: int) -> int:
        items = 0
        while time.perf_counter() < stop_at:
            texts = requests[next(ticket) % len(requests)]
            tokenizer.encode(texts)
            items += len(texts)
        return items

    return _threaded(work, threads)


def run_overhead(
    bundle_dir: Path,
    inputs: Inputs,
    *,
    callers: int = 64,
    seconds: float = 5.0,
    ideal_batch: int = 32,
    request_texts: int = 32,
    server_flags: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """(c) the server with its batch log, then (a) and (b) on the logged rows, then the tokenizer.
    `server_flags`: settings of the server under test (e.g. min_padding_efficiency), reported."""
    bundle = load_bundle(bundle_dir)
    requests = requests_of(inputs.texts, request_texts)
    with tempfile.TemporaryDirectory(prefix="streamrec-overhead-") as tmp:
        log_path = Path(tmp) / "batches.jsonl"
        with server_process(bundle_dir, batch_log=log_path, **(server_flags or {})) as server:
            window = Window(seconds, warmup_s=1.0, min_requests=20, max_seconds=4 * seconds)
            served = closed_loop(server.address, requests, callers, window, cpu_pid=server.proc.pid)
        batches = list(read_batch_log(log_path, bundle.manifest.sha256))
    if not batches:
        raise RuntimeError("the server logged no batch")
    with server_process(bundle_dir, null_model_dim=bundle.manifest.dim, **(server_flags or {})) as server:
        runtime = closed_loop(server.address, requests, callers, window, cpu_pid=server.proc.pid)
    workers = ServerConfig().resolved_workers()
    pad_id = bundle.manifest.pad_token_id
    ideal = ideal_batches(batches, ideal_batch)
    logged = replay(bundle.model_path, batches, pad_id, workers, seconds)
    best = replay(bundle.model_path, ideal, pad_id, workers, seconds)
    tokenizer = TextTokenizer.from_file(bundle.tokenizer_path, bundle.manifest.max_tokens, pad_id)
    tokens = tokenize_rate(tokenizer, requests, ServerConfig().resolved_tokenizer_threads(), seconds)
    measured = served.to_dict()
    measured.pop("quantiles_ms")
    null_model = runtime.to_dict()
    pipeline_cpu = tokens.cpu_ms_per_item + best.cpu_ms_per_item
    return {
        "environment": environment.describe(),
        "inputs": inputs.describe(),
        "callers": callers,
        "server_flags": server_flags or {},
        "c_server": {**measured, "padding_efficiency": padding_efficiency(batches), "batches": len(batches)},
        "a_logged_batches": {**logged.to_dict(), "padding_efficiency": padding_efficiency(batches)},
        "b_ideal_batches": {
            **best.to_dict(),
            "padding_efficiency": padding_efficiency(ideal),
            "batch": ideal_batch,
        },
        "tokenizer": tokens.to_dict(),
        "d_runtime_null_model": {
            key: null_model[key]
            for key in ("items_per_s", "cpu_ms_per_item", "p50_ms", "server_p50_ms", "errors")
        },
        "ratios": {
            "c_over_a": _ratio(measured["items_per_s"], logged.items_per_s),
            "c_over_b": _ratio(measured["items_per_s"], best.items_per_s),
            "a_over_b": _ratio(logged.items_per_s, best.items_per_s),
            "server_cpu_over_tokenizer_plus_b_cpu": _ratio(measured["cpu_ms_per_item"], pipeline_cpu),
            "runtime_cpu_over_server_cpu": _ratio(runtime.cpu_ms_per_item, measured["cpu_ms_per_item"]),
        },
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def markdown(report: dict[str, Any]) -> str:
    """The (a)/(b)/(c) table and ratios of one overhead run."""
    env, c, a, b = (
        report["environment"],
        report["c_server"],
        report["a_logged_batches"],
        report["b_ideal_batches"],
    )
    rows = [
        ("(c) server over gRPC", c["items_per_s"], c.get("cpu_ms_per_item"), c["padding_efficiency"]),
        (
            "(a) model on the server's batches",
            a["items_per_s"],
            a["cpu_ms_per_item"],
            a["padding_efficiency"],
        ),
        (
            f"(b) model on sorted batches of {b['batch']}",
            b["items_per_s"],
            b["cpu_ms_per_item"],
            b["padding_efficiency"],
        ),
        ("tokenizer alone", report["tokenizer"]["items_per_s"], report["tokenizer"]["cpu_ms_per_item"], None),
    ]
    d = report.get("d_runtime_null_model")  # absent from reports written before it existed
    if d is not None:
        rows.insert(
            1,
            ("(d) server with a null model: the runtime alone", d["items_per_s"], d["cpu_ms_per_item"], None),
        )
    lines = [
        f"Inputs: set `{report['inputs']['set']}`, {report['inputs']['count']} texts; "
        f"{report['callers']} callers; server flags {report.get('server_flags') or 'none'}; "
        f"{c['batches']} batches logged. CPU: {env['cpu_model']}, "
        f"{', '.join(env['cpu_flags']) or 'no AVX flags'}.",
        "",
        "| what | items/s | CPU ms/item | padding efficiency |",
        "|---|---|---|---|",
    ]
    for name, rate, cpu, eff in rows:
        cpu_text = "n/a" if cpu is None else f"{cpu:.4f}"
        lines.append(f"| {name} | {rate:,.0f} | {cpu_text} | {'' if eff is None else f'{eff:.3f}'} |")
    lines.append("")
    waits = [(name, part) for name, part in (("(c)", c), ("(d)", d)) if part and part.get("server_p50_ms")]
    if waits:
        lines.append(
            "- callers' p50 vs the server's own p50 (the rest is in gRPC): "
            + "; ".join(
                f"{name} {part['p50_ms']:.1f} vs {part['server_p50_ms']:.1f} ms" for name, part in waits
            )
        )
    for key, value in report["ratios"].items():
        lines.append(f"- {key}: {'n/a' if value is None else f'{value:.3f}'}")
    return "\n".join(lines)
