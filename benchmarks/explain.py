"""Explain, measured: faithfulness on STS-B dev, latency over gRPC, and the PNG example in docs/explain.md.

    python -m benchmarks.explain faithfulness --bundle DIR [--pairs 200]
    python -m benchmarks.explain latency --bundle DIR [--calls 400]
    python -m benchmarks.explain png --bundle DIR --out docs/img/explain-example.png "query" "candidate"

Faithfulness (a deletion test): for each STS-B dev pair, delete from the left sentence the k words the
attribution ranks highest, re-embed with the served model (model.onnx) and measure how much the cosine
to the right sentence drops; compare with deleting k random words of the same sentence (averaged over
several draws). A faithful attribution makes the first drop clearly larger.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedder.config import load_config
from embedder.core.bundle import load_bundle
from embedder.core.engine import EmbeddingEngine
from embedder.explain.attribution import WORD, Explanation
from embedder.explain.explainer import Explainer
from embedder.explain.render import Segment, others_line, rgb, scale_of, segments
from training.evaluate import load_sts

Embed = Callable[[list[str]], np.ndarray]

# Two ~32-token texts (incl. [CLS]/[SEP]) for the latency figure.
LATENCY_QUERY = (
    "live jazz concert recording from a small club in new orleans with trumpet, piano and a double bass "
    "trio playing classic standards and blues late into the night"
)
LATENCY_CANDIDATE = (
    "an intimate documentary about jazz musicians in new orleans, following a young brass band from "
    "rehearsal rooms to crowded bars and street parades during the festival week"
)


@dataclass(frozen=True)
class Faithfulness:
    pairs: int
    k: int
    draws: int
    mean_drop_top: float
    mean_drop_random: float
    margin: float  # mean over pairs of (drop_top - drop_random)
    margin_ci95_low: float  # normal approximation over pairs
    win_rate: float  # fraction of pairs where deleting the top-k words dropped similarity more


def delete_spans(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """`text` without the character spans (sorted, non-overlapping), whitespace collapsed."""
    kept, at = [], 0
    for start, end in sorted(spans):
        kept.append(text[at:start])
        at = end
    kept.append(text[at:])
    return " ".join(" ".join(kept).split())


def _word_spans(ex: Explanation) -> tuple[list[tuple[int, int]], np.ndarray]:
    units = ex.query.units
    idx = [i for i, u in enumerate(units) if u.kind == WORD]
    return [(units[i].char_start, units[i].char_end) for i in idx], ex.query.contributions[idx]


def faithfulness(
    explainer: Explainer,
    embed: Embed,
    left: Sequence[str],
    right: Sequence[str],
    *,
    pairs: int = 200,
    k: int = 3,
    draws: int = 10,
    seed: int = 0,
) -> Faithfulness:
    """The deletion test over the first `pairs` pairs whose left sentence has at least k + 2 words."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    for q, c in zip(left, right, strict=True):
        spans, values = _word_spans(explainer.run(q, c).explanation)
        if len(spans) < k + 2:
            continue
        top = [spans[i] for i in np.argsort(-values, kind="stable")[:k]]
        randoms = [[spans[i] for i in rng.choice(len(spans), k, replace=False)] for _ in range(draws)]
        texts += [q, c, delete_spans(q, top)] + [delete_spans(q, r) for r in randoms]
        if len(texts) == pairs * (3 + draws):
            break
    n = len(texts) // (3 + draws)
    emb = embed(texts).reshape(n, 3 + draws, -1)
    cos = np.einsum("npd,nd->np", emb, emb[:, 1])  # every variant against the right sentence
    drop_top = cos[:, 0] - cos[:, 2]
    drop_rand = (cos[:, :1] - cos[:, 3:]).mean(axis=1)
    diff = drop_top - drop_rand
    return Faithfulness(
        pairs=n,
        k=k,
        draws=draws,
        mean_drop_top=float(drop_top.mean()),
        mean_drop_random=float(drop_rand.mean()),
        margin=float(diff.mean()),
        margin_ci95_low=float(diff.mean() - 1.96 * diff.std(ddof=1) / np.sqrt(n)),
        win_rate=float((diff > 0).mean()),
    )


def stsb_faithfulness(bundle_dir: Path, pairs: int = 200, k: int = 3) -> Faithfulness:
    """`faithfulness` on STS-B dev (read from ../shared/data/stsb) with the bundle's own serving path."""
    bundle = load_bundle(bundle_dir)
    explainer = Explainer(bundle, max_text_chars=20000)
    engine = EmbeddingEngine(bundle, load_config({"workers": 1, "tokenizer_threads": 1}, env={}))
    try:
        sts = load_sts("dev")

        def embed(texts: list[str]) -> np.ndarray:
            chunks = [engine.embed_in_process(texts[i : i + 256]) for i in range(0, len(texts), 256)]
            return np.concatenate(chunks)

        return faithfulness(explainer, embed, sts.left, sts.right, pairs=pairs, k=k)
    finally:
        engine.close_sync()
        explainer.close()


# -- latency --------------------------------------------------------------------------------------------


def latency(bundle_dir: Path, calls: int = 400) -> dict[str, float]:
    """Explain of two ~32-token texts: in-process p50, and over gRPC to a real server subprocess."""
    import grpc

    from benchmarks.serving import server_process
    from embedder.v1 import embedder_pb2 as pb
    from embedder.v1 import embedder_pb2_grpc as pb_grpc

    explainer = Explainer(load_bundle(bundle_dir), max_text_chars=20000)
    first = explainer.run(LATENCY_QUERY, LATENCY_CANDIDATE)
    tokens = (first.explanation.query.token_count, first.explanation.candidate.token_count)  # type: ignore[union-attr]
    local = _times(lambda: explainer.run(LATENCY_QUERY, LATENCY_CANDIDATE), calls)
    explainer.close()
    request = pb.ExplainRequest(query=LATENCY_QUERY, candidate=LATENCY_CANDIDATE)
    server_us: list[float] = []
    with server_process(bundle_dir) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.EmbedderStub(channel)

        def call() -> None:
            server_us.append(stub.Explain(request, timeout=10).timing.total_us)

        remote = _times(call, calls)
    return {
        "tokens_query": tokens[0],
        "tokens_candidate": tokens[1],
        "in_process_p50_ms": _pct(local, 50),
        "grpc_p50_ms": _pct(remote, 50),
        "grpc_p90_ms": _pct(remote, 90),
        "grpc_p99_ms": _pct(remote, 99),
        "server_total_p50_ms": statistics.median(server_us) / 1000,
        "calls": calls,
    }


def _times(fn: Callable[[], object], calls: int) -> list[float]:
    for _ in range(min(20, calls)):
        fn()
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


# -- the PNG in docs/explain.md ----------------------------------------------------------------------

_WRAP_X = 1.45  # inches: where text lines start, right of the labels
_BOX_PAD_PT = 2.5


def render_png(ex: Explanation, query: str, candidate: str, out: Path, width_in: float = 11.0) -> Path:
    """The terminal/HTML view drawn with matplotlib: each word on its colour, wrapped to `width_in`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(width_in, 4.6), dpi=150)
    cursor = [4.25]  # y in inches from the bottom, moving down

    def line(text: str, x: float = 0.3, **style: object) -> None:
        fig.text(x, cursor[0], text, transform=_inches(fig), **style)  # type: ignore[arg-type]
        cursor[0] -= 0.42

    scale = scale_of(ex)
    title = f"cosine similarity {ex.similarity:.3f}" if ex.candidate is not None else "single-text saliency"
    line(title, fontsize=15, weight="bold")
    texts = [("query", query, ex.query)]
    if ex.candidate is not None:
        texts.append(("candidate", candidate, ex.candidate))
    for label, text, attr in texts:
        fig.text(0.3, cursor[0], label, fontsize=11, color="#555", transform=_inches(fig))
        _draw_words(fig, segments(text, attr), scale, cursor, width_in)
        line(others_line(attr), x=_WRAP_X, fontsize=10, color="#666")
    if ex.candidate is not None and ex.top_pairs:
        cand = ex.candidate
        top = ",   ".join(
            f"{ex.query.units[i].text} ↔ {cand.units[j].text} {v:+.3f}" for i, j, v in ex.top_pairs[:4]
        )
        line("top word pairs:  " + top, fontsize=11, color="#333")
    line(
        "warm = raises the similarity, blue = lowers it; words + [CLS] + [SEP] + [bias] sum to it", fontsize=9
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return out


def _inches(fig: Any) -> Any:
    """Inches from the bottom-left corner, as a figure-fraction transform (which bbox_inches='tight' keeps
    in place; dpi_scale_trans text is shifted by the tight crop)."""
    from matplotlib.transforms import Affine2D

    w, h = fig.get_size_inches()
    return Affine2D().scale(1 / w, 1 / h) + fig.transFigure


def _draw_words(fig: Any, segs: list[Segment], scale: float, cursor: list[float], width_in: float) -> None:
    """Words on their colour boxes, left to right, wrapping; gaps between words drawn as one space."""
    renderer = fig.canvas.get_renderer()
    x = _WRAP_X
    for seg in segs:
        if seg.value is None:
            x += 0.06
            continue
        r, g, b = rgb(seg.value, scale)
        box = {"facecolor": (r / 255, g / 255, b / 255), "edgecolor": "none", "pad": _BOX_PAD_PT}
        t = fig.text(x, cursor[0], seg.text, fontsize=14, bbox=box, transform=_inches(fig))
        w = t.get_window_extent(renderer).width / fig.dpi + 2 * _BOX_PAD_PT / 72  # the box pads both sides
        if x + w > width_in - 0.3:
            cursor[0] -= 0.45
            x = _WRAP_X
            t.set_position((x, cursor[0]))
        x += w
    cursor[0] -= 0.42


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.explain", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("faithfulness", "latency", "png"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--bundle", type=Path, required=True)
    sub.choices["faithfulness"].add_argument("--pairs", type=int, default=200)
    sub.choices["latency"].add_argument("--calls", type=int, default=400)
    png = sub.choices["png"]
    png.add_argument("--out", type=Path, required=True)
    png.add_argument("query")
    png.add_argument("candidate", nargs="?", default="")
    args = parser.parse_args(argv)
    if args.command == "faithfulness":
        print(json.dumps(asdict(stsb_faithfulness(args.bundle, args.pairs)), indent=2))
    elif args.command == "latency":
        print(json.dumps(latency(args.bundle, args.calls), indent=2))
    else:
        explainer = Explainer(load_bundle(args.bundle), max_text_chars=20000)
        result = explainer.run(args.query, args.candidate)
        explainer.close()
        print(render_png(result.explanation, args.query, args.candidate, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
