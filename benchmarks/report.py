"""report.md from results.json (raw measurements + the `summary` derived from them by summary.py).

Throughput cells read "median (max)" over the rounds. Section headings are stable: the benchmark test
finds its tables by them.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from benchmarks.models import CNN
from benchmarks.summary import REFERENCES, headline_cell

FIGURES = {
    "throughput_vs_concurrency.png": "End-to-end gRPC throughput vs concurrent callers (dashed: in-process)",
    "latency_cdf.png": "Latency CDF, open loop at 50% and 90% of each model's measured maximum",
    "throughput_vs_seq_len.png": "Model-only throughput vs sequence length",
    "quality_vs_throughput.png": "Quality vs end-to-end throughput (Pareto front)",
}


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def rate(x: float) -> str:
    return f"{x:,.0f}"


def med_max(values: Sequence[float]) -> str:
    return f"{rate(statistics.median(values))} ({rate(max(values))})"


def ratio_text(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}x"


def num(x: float | None, spec: str) -> str:
    """A derived figure, or n/a when it could not be computed (a zero denominator, a missing model)."""
    return "n/a" if x is None else format(x, spec)


def divide(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def label(results: dict[str, Any], key: str) -> str:
    return f"{key}: {results['models'][key]['label']}"


def _set_prefix(r: dict[str, Any]) -> str:
    """ "set `items`, " for runs that name their input set (runs before named sets print as they did)."""
    name = r["inputs"].get("set")
    return f"set `{name}`, " if name else ""


def _on_set(r: dict[str, Any]) -> str:
    """ " Texts: set `items` (1,561 texts)." where the run names its set; "" for older runs."""
    name = r["inputs"].get("set")
    return f" Texts: set `{name}` ({r['inputs']['count']:,} texts)." if name else ""


def _facts(r: dict[str, Any]) -> list[str]:
    env, cfg = r["environment"], r["config"]
    git = env["git"]
    return [
        f"# streamrec-bench report — {r['run_id']}",
        "",
        f"- mode: {'--quick' if cfg['quick'] else 'full'}; {cfg['rounds']} round(s), models interleaved; "
        f"took {r['duration_s']:.0f} s",
        f"- machine: {env['cpu_model']}, {env['logical_cores']} logical cores, "
        f"{', '.join(env['cpu_flags']) or 'no AVX flags'}; load average {env['load_avg'][0]:.2f} at start, "
        f"{r['load_avg_at_end'][0]:.2f} at end; nice {env['nice']}",
        f"- commit {git['commit'][:12]}{' (dirty tree)' if git['dirty'] else ''}; "
        + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v != "not installed"),
        f"- inputs: {_set_prefix(r)}{r['inputs']['count']} texts from {r['inputs']['source']} "
        f"({r['inputs']['note']}); "
        f"requests of {cfg['request_texts']} texts",
        "",
    ]


def _headline(r: dict[str, Any]) -> list[str]:
    s, q = r["summary"]["models"], r["quality"]
    b, n = headline_cell(r)
    rows = [
        (
            label(r, k),
            f"{r['models'][k]['parameters'] / 1e6:.1f}M",
            rate(m["model_only"]["median"]),
            rate(m["in_process"]["median"]),
            rate(m["grpc"]["median"]),
            num(m["efficiency"], ".2f"),
            f"{q[k]['stsb_dev_spearman']:.2f}",
            f"{q[k]['agreement_spearman']:.3f}" if "agreement_spearman" in q[k] else "n/a",
        )
        for k, m in s.items()
    ]
    header = (
        "model",
        "params",
        f"(a) model only, b{b}×{n} tok, items/s",
        "(b) in-process items/s",
        "(c) gRPC items/s",
        "(c)÷(b)",
        "STS-B dev ρ×100",
        "teacher agreement ρ",
    )
    return [
        "## Headline",
        "",
        "Medians over rounds; (b) and (c) at their best concurrency." + _on_set(r),
        "",
        *table(header, rows),
    ]


def targets_table(r: dict[str, Any]) -> list[str]:
    """The issues' targets with this run's values and verdicts (report.md and the README snippet)."""

    def verdict(holds: bool | None) -> str:
        return "not measured" if holds is None else ("holds" if holds else "MISSED")

    def value(v: float | None) -> str:
        # Three decimals below 10: an efficiency of 0.798 must not print as the 0.80 it misses.
        return "n/a" if v is None else (f"{v:,.3f}" if v < 10 else f"{v:,.2f}" if v < 100 else f"{v:,.0f}")

    rows = [(name, value(v), target, verdict(h)) for name, v, target, h in r["summary"]["targets"]]
    return table(("target", "value", "wanted", "verdict"), rows)


def _targets(r: dict[str, Any]) -> list[str]:
    notes = ["Targets are reported, not asserted: this machine is shared and noisy."]
    if r["models"].get(CNN, {}).get("random_weights"):
        notes.append("The CNN has RANDOM weights in this run: its quality figures mean nothing.")
    return ["## Targets", "", *notes, "", *targets_table(r)]


def _ratios(r: dict[str, Any]) -> list[str]:
    ratio = r["summary"]["ratios"]
    out = ["## CNN ÷ MiniLM throughput ratio", ""]
    if not ratio:
        return [*out, "Needs `cnn` and a MiniLM baseline in --models.", ""]
    b, n = headline_cell(r)
    refs = [ref for ref in REFERENCES if ref in ratio]
    modes = (
        ("model_only", f"(a) model only, batch {b} × {n} tokens"),
        ("in_process", "(b) in-process runtime, best concurrency"),
        ("grpc", "(c) end-to-end gRPC, best concurrency"),
    )
    rows = [(title, *(ratio_text(ratio[ref][mode]) for ref in refs)) for mode, title in modes]
    return [*out, *table(("mode", *(f"CNN ÷ {ref}" for ref in refs)), rows)]


def _efficiency(r: dict[str, Any]) -> list[str]:
    s = r["summary"]["models"]
    eff = [(label(r, k), num(m["efficiency"], ".2f"), num(m["cpu_efficiency"], ".2f")) for k, m in s.items()]
    return [
        "## Serving efficiency (c) ÷ (b)",
        "",
        "Throughput: best gRPC median ÷ best in-process median (the gRPC client shares the 2 cores). "
        "CPU: in-process CPU ms per item ÷ server CPU ms per item (robust to other tenants).",
        "",
        *table(("model", "throughput (c)÷(b)", "CPU per item (b)÷(c)"), eff),
    ]


def _inputs(r: dict[str, Any]) -> list[str]:
    lengths = r["inputs"]["token_lengths"]
    buckets = list(next(iter(lengths.values()))["buckets"])
    rows = [
        (
            k,
            f"{t['mean']:.1f}",
            *(f"{t[p]:.0f}" for p in ("p10", "p50", "p90", "p99")),
            t["max"],
            *(f"{100 * t['buckets'][bk]:.1f}%" for bk in buckets),
        )
        for k, t in lengths.items()
    ]
    header = ("tokenizer of", "mean", "p10", "p50", "p90", "p99", "max", *(f"{bk} tok" for bk in buckets))
    inputs = r["inputs"]
    intro = (
        f"{_set_prefix(r)}{inputs['count']} texts, {inputs['source']}; tokens incl. specials, untruncated."
    )
    return ["## Inputs: token-length distribution", "", intro, "", *table(header, rows)]


def _model_only(r: dict[str, Any]) -> list[str]:
    cells = [(c["batch"], c["seq_len"]) for c in next(iter(r["model_only"].values()))]
    rows = [(label(r, k), *(med_max(c["rounds"]) for c in v)) for k, v in r["model_only"].items()]
    out = [
        "## (a) Model only: ONNX Runtime, items/s",
        "",
        f"median (max) over rounds; {r['config']['workers']} single-threaded sessions, one thread each; "
        "rows are the word pieces of the input texts run on to each length." + _on_set(r)
        if _on_set(r)
        else f"median (max) over rounds; {r['config']['workers']} single-threaded sessions, one thread each.",
        "",
    ]
    out += table(("model", *(f"b{b}×{n}" for b, n in cells)), rows)
    if CNN in r["model_only"]:
        cnn = r["model_only"][CNN]
        ratio_rows = [
            (
                f"CNN ÷ {ref}",
                *(
                    ratio_text(divide(statistics.median(a["rounds"]), statistics.median(b["rounds"])))
                    for a, b in zip(cnn, r["model_only"][ref], strict=True)
                ),
            )
            for ref in REFERENCES
            if ref in r["model_only"]
        ]
        out += table(("ratio", *(f"b{b}×{n}" for b, n in cells)), ratio_rows)
    return out


def _sweep(r: dict[str, Any], key: str, cpu_fields: Sequence[str]) -> list[tuple[Any, ...]]:
    rows = []
    for k, cells in r[key].items():
        for c in cells:
            runs = c["runs"]
            p50 = statistics.median(x["p50_ms"] for x in runs)
            p99 = statistics.median(x["p99_ms"] for x in runs)
            cpu = [num(_median_or_none([x.get(f) for x in runs]), ".3f") for f in cpu_fields]
            errors = sum(x["errors"] for x in runs)
            rows.append(
                (
                    label(r, k),
                    c["concurrency"],
                    med_max(c["rounds"]),
                    f"{p50:.1f}",
                    f"{p99:.1f}",
                    *cpu,
                    errors,
                )
            )
    return rows


def _in_process(r: dict[str, Any]) -> list[str]:
    header: tuple[str, ...] = ("model", "callers", "items/s", "p50 ms", "p99 ms", "CPU ms/item", "errors")
    # Runs since the padding tally name their padding efficiency (real / padded tokens); older ones don't.
    padding = any(
        "padding_efficiency" in x for cells in r["in_process"].values() for c in cells for x in c["runs"]
    )
    fields = ["cpu_ms_per_item", "padding_efficiency"] if padding else ["cpu_ms_per_item"]
    if padding:
        header = (*header[:-1], "padding efficiency", "errors")
    notes = [_on_set(r).strip()] if _on_set(r) else []
    if padding:
        notes.append("Padding efficiency: real ÷ padded tokens of the batches the scheduler formed.")
    intro = [" ".join(notes), ""] if notes else []
    return [
        "## (b) In-process runtime: tokenizer + batcher + ONNX",
        "",
        *intro,
        *table(header, _sweep(r, "in_process", fields)),
    ]


def _grpc(r: dict[str, Any]) -> list[str]:
    header = (
        "model",
        "callers",
        "items/s",
        "p50 ms",
        "p99 ms",
        "server CPU ms/item",
        "client CPU ms/item",
        "errors",
    )
    out = [
        "## (c) End-to-end gRPC, closed loop",
        "",
        f"Real server subprocesses, default config; requests of {r['config']['request_texts']} texts. The "
        "load generator (client) runs on the same 2 cores: its CPU per item is the share (c) loses to it."
        + _on_set(r),
        "",
        *table(header, _sweep(r, "grpc_closed", ["cpu_ms_per_item", "client_cpu_ms_per_item"])),
    ]
    if CNN in r["grpc_closed"]:
        by_c = {
            ref: {c["concurrency"]: statistics.median(c["rounds"]) for c in r["grpc_closed"][ref]}
            for ref in REFERENCES
            if ref in r["grpc_closed"]
        }
        rows = [
            (
                f"CNN ÷ {ref}",
                *(
                    ratio_text(divide(statistics.median(c["rounds"]), by_c[ref][c["concurrency"]]))
                    for c in r["grpc_closed"][CNN]
                ),
            )
            for ref in by_c
        ]
        out += table(("ratio", *(f"{c['concurrency']} callers" for c in r["grpc_closed"][CNN])), rows)
    rows_open = [
        (
            label(r, k),
            f"{run['fraction']:.0%}",
            rate(run["offered_items_per_s"]),
            rate(run["items_per_s"]),
            f"{run['p50_ms']:.1f}",
            f"{run['p95_ms']:.1f}",
            f"{run['p99_ms']:.1f}",
            run["requests"],
            run["errors"],
        )
        for k, runs in r["grpc_open"].items()
        for run in runs
    ]
    header_open = (
        "model",
        "load",
        "offered items/s",
        "served items/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "requests",
        "errors",
    )
    return [
        *out,
        "## (c) End-to-end gRPC, open loop",
        "",
        "Poisson arrivals at a fraction of the model's best closed-loop median; one run each." + _on_set(r),
        "",
        *table(header_open, rows_open),
    ]


def _serving(r: dict[str, Any]) -> list[str]:
    """Issue 3's serving figures, for every model, from this one run."""
    rows = [
        (
            label(r, k),
            f"{rate(m['grpc']['median'])} @ {m['grpc']['concurrency']}",
            rate(m["in_process"]["median"]),
            num(m["efficiency"], ".2f"),
            f"{m['single_p50_ms']:.2f} / {m['single_p99_ms']:.2f}",
            f"{m['peak_rss_mb']:.0f}",
            f"{m['start_to_serving_s']:.2f}",
        )
        for k, m in r["summary"]["models"].items()
    ]
    header = (
        "model",
        "(c) gRPC items/s @ callers",
        "(b) in-process items/s",
        "(c)÷(b)",
        "one caller, one text: p50 / p99 ms",
        "server peak RSS MB",
        "start to SERVING s",
    )
    intro = (
        f"Server subprocesses with the default config; requests of {r['config']['request_texts']} texts; "
        "RSS sampled every 0.2 s from start through the closed-loop sweep, open loop and one-caller test; "
        "start = spawn to health SERVING." + _on_set(r)
    )
    return ["## Serving figures", "", intro, "", *table(header, rows)]


def _quality(r: dict[str, Any]) -> list[str]:
    def f(x: float | None, spec: str) -> str:
        return "n/a" if x is None else format(x, spec)

    rows = [
        (
            label(r, k),
            f(q["stsb_dev_spearman"], ".2f"),
            f(q.get("agreement_spearman"), ".3f"),
            f(q.get("knn10_overlap"), ".3f"),
            q["sts_pairs"],
            q["agreement_texts"],
        )
        for k, q in r["quality"].items()
    ]
    header = ("model", "STS-B dev ρ×100", "teacher agreement ρ", "10-NN overlap", "STS pairs", "texts")
    intro = "All embeddings fetched over gRPC from the servers measured above; teacher = minilm-fp32."
    agreement_set = next((q.get("agreement_set") for q in r["quality"].values()), None)
    if agreement_set:
        intro += f" Teacher agreement on set `{agreement_set}` (whatever set the throughput used)."
    return ["## Quality (through gRPC)", "", intro, "", *table(header, rows)]


def _notes(r: dict[str, Any]) -> list[str]:
    notes = [f"- skipped {k}: {why}" for k, why in r["skipped"].items()]
    if r["config"]["quick"]:
        notes.append(
            "- --quick: one round, short cells, subsets of STS-B dev and of the agreement texts; "
            "a smoke test of the pipeline, not a measurement to quote."
        )
    notes.append("- Throughput varies ~2x on this shared VM; compare models within one run, not across runs.")
    return ["## Notes", "", *notes, ""]


def render(results: dict[str, Any]) -> str:
    figures = ["## Figures", ""] + [f"![{alt}]({name})\n" for name, alt in FIGURES.items()]
    parts = [
        _facts,
        _headline,
        _targets,
        _ratios,
        _efficiency,
        _inputs,
        _model_only,
        _in_process,
        _grpc,
        _serving,
        _quality,
    ]
    lines = [line for part in parts for line in part(results)]
    return "\n".join([*lines, *figures, *_notes(results)])


def console_summary(results: dict[str, Any]) -> str:
    """What `streamrec-bench` prints when it is done: headline, targets, ratios, serving figures."""
    parts = [_headline, _targets, _ratios, _efficiency, _serving]
    return "\n".join(line for part in parts for line in part(results))
