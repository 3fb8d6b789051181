"""Score the teacher and any number of bundles on the stand-in checks (training/checks.py), one table.

    python -m training.checks_cli --config training/configs/cnn5m-v2.toml \\
        --bundle v1=.cache/models/streamrec-cnn-v1 --bundle v2=models/streamrec-cnn-v2 --out checks.json

Everything is built from the config's *held-out* split (never trained on): the compositional pairs,
the item-retrieval set (held-out Debian packages: synopsis -> description) and the agreement sample.
Teacher vectors come from the job's content-addressed store (computed once, cached).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from embedder.core.bundle import load_bundle
from training import checks, evaluate
from training.config import load_job_config
from training.corpus_natural import debian_item_pairs, item_text
from training.minimal_pairs import Antonyms
from training.stages import Dist, eval_sample, stage_corpus, stage_teacher
from training.student import encode_with

Encoder = Callable[[Sequence[str]], np.ndarray]


def bundle_encoder(path: Path, max_tokens: int) -> tuple[Encoder, list[int]]:
    """(texts -> embeddings through the bundle's model.onnx, its Matryoshka dims)."""
    bundle = load_bundle(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(bundle.model_path), opts, providers=["CPUExecutionProvider"])

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})[0])

    dims = [int(d) for d in bundle.manifest.matryoshka_dims]
    return (lambda texts: encode_with(run, texts, max_tokens)), dims


def retrieval_pairs(heldout: list[dict[str, str]], limit: int) -> tuple[list[str], list[str]]:
    """(queries, documents) of held-out Debian items: query = synopsis, document = description."""
    held = {r["text"] for r in heldout if r["source"] == "debian_items"}
    queries, docs, seen = [], [], set()
    for synopsis, description in debian_item_pairs(Path("/var/lib/apt/lists")):
        if item_text(synopsis, description) in held and description not in seen:
            seen.add(description)
            queries.append(synopsis)
            docs.append(description)
    return queries[:limit], docs[:limit]


def score(
    encode: Encoder,
    teacher: dict[str, np.ndarray],
    sets: dict[str, Any],
    dims: Sequence[int],
    n_pairs: int,
) -> dict[str, Any]:
    comp: checks.PairSet = sets["comp"]
    ev_texts, sources = sets["ev_texts"], sets["ev_sources"]
    student_ev = encode(ev_texts)
    out: dict[str, Any] = {"stsb_dev_spearman": checks.sts_from(encode, sets["sts"])}
    out.update(evaluate.teacher_agreement(student_ev, teacher["ev"], n_pairs))
    out.update(
        checks.compositional_scores(
            (encode(comp.left), encode(comp.right)), (teacher["comp_l"], teacher["comp_r"]), comp.kind
        )
    )
    if sets["queries"]:
        out["item_ndcg10"] = checks.ndcg_at_10(encode(sets["queries"]), encode(sets["docs"]))
    out["by_source"] = checks.agreement_by_source(student_ev, teacher["ev"], sources, n_pairs // 4)
    for d in dims:
        out[f"stsb_dev_spearman@{d}"] = checks.sts_from(encode, sets["sts"], d)
        agree = evaluate.teacher_agreement(student_ev[:, :d], teacher["ev"], n_pairs)
        out.update({f"{k}@{d}": v for k, v in agree.items()})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--bundle", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--per-kind", type=int, default=1000, help="compositional pairs per edit kind")
    parser.add_argument("--retrieval", type=int, default=3000, help="item-retrieval queries")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    job = load_job_config(args.config)
    if args.work_dir:
        job.work_dir = args.work_dir
    _, heldout = stage_corpus(job, Dist())
    sample = eval_sample(job, heldout)
    comp = checks.compositional_pairs(heldout, Antonyms.from_wordnet(), args.per_kind)
    queries, docs = retrieval_pairs(heldout, args.retrieval)
    sets = {
        "sts": evaluate.load_sts("dev"),
        "ev_texts": [r["text"] for r in sample],
        "ev_sources": [r["source"] for r in sample],
        "comp": comp,
        "queries": queries,
        "docs": docs,
    }
    groups: dict[str, list[str]] = {
        "ev": [r["text"] for r in sample],
        "comp_l": comp.left,
        "comp_r": comp.right,
        "q": queries,
        "d": docs,
    }
    teacher = {
        k: np.asarray(v, np.float32)
        for k, v in stage_teacher(job, groups, Dist(), list(groups.items())).items()
    }
    lookup = {t: v for k in groups for t, v in zip(groups[k], teacher[k], strict=True)}
    sts = evaluate.load_sts("dev")
    lookup.update(_teacher_vectors(job, [*sts.left, *sts.right]))

    def teacher_encode(texts: Sequence[str]) -> np.ndarray:
        return np.stack([lookup[t] for t in texts])

    results = {"teacher": score(teacher_encode, teacher, sets, [], job.eval.agreement_pairs)}
    for spec in args.bundle:
        name, _, path = spec.partition("=")
        encode, dims = bundle_encoder(Path(path), job.train.max_tokens)
        results[name] = score(encode, teacher, sets, dims, job.eval.agreement_pairs)
    sizes = {"comp_pairs": len(comp.left), "retrieval_queries": len(queries), "agreement_texts": len(sample)}
    print(table(results, sizes))
    if args.out:
        args.out.write_text(json.dumps({"sizes": sizes, "results": results}, indent=2))
    return 0


def _teacher_vectors(job: Any, texts: list[str]) -> dict[str, np.ndarray]:
    vecs = stage_teacher(job, {"sts": texts}, Dist(), [("sts", texts)])["sts"]
    return {t: np.asarray(v, np.float32) for t, v in zip(texts, vecs, strict=True)}


def table(results: dict[str, dict[str, Any]], sizes: dict[str, int]) -> str:
    cols = [
        ("STS-B dev", "stsb_dev_spearman", 1),
        ("agree rho", "agreement_spearman", 3),
        ("10-NN", "knn10_overlap", 3),
        ("comp rho", "comp_spearman_all", 3),
        ("comp drop ratio", "comp_drop_ratio_all", 3),
        ("neg drop ratio", "comp_drop_ratio_negation", 3),
        ("swap drop ratio", "comp_drop_ratio_swap", 3),
        ("item nDCG@10", "item_ndcg10", 3),
    ]
    lines = [
        f"checks on held-out texts: {sizes}",
        "| model | " + " | ".join(c[0] for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | " + " | ".join(f"{r.get(k, float('nan')):.{d}f}" for _, k, d in cols) + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
