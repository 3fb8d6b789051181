"""The teacher's encoding rate per precision and backend on the same training texts, interleaved in rounds.

    python scripts/teacher_rate.py [--work-dir .cache] [--texts 2048] [--rounds 2] [--skip bf16-torch]

Reads the first `--texts` texts of the v2 corpus (`<work-dir>/corpus/cnn5m-v2/train.jsonl`, built by
`make data`) and prints texts/s for bf16 on torch, fp32 on torch and fp32 on onnxruntime (each at the
batch size TeacherConfig defaults to), with the CPU flags. bf16 is only native with AVX512_BF16 or AMX
(elsewhere it is emulated, ~14 texts/s: skip it there), and `auto` picks fp32 on onnxruntime there
(training/teacher.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from training.config import TeacherConfig
from training.teacher import cpu_flags, make_encoder

MAX_TOKENS = 128
# name -> (precision, backend, batch size from the config's defaults)
CELLS = {
    "bf16-torch": ("bf16", "torch", TeacherConfig.batch_size),
    "fp32-torch": ("fp32", "torch", TeacherConfig.batch_size),
    "fp32-onnx": ("fp32", "onnx", TeacherConfig.onnx_batch_size),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default=".cache")
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip", action="append", default=[], choices=sorted(CELLS))
    args = parser.parse_args()
    corpus = Path(args.work_dir) / "corpus" / "cnn5m-v2" / "train.jsonl"
    with corpus.open(encoding="utf-8") as lines:
        texts = [json.loads(line)["text"] for _, line in zip(range(args.texts), lines, strict=False)]
    onnx_path = Path(args.work_dir) / "teacher" / "onnx" / "model.onnx"
    encoders = {
        name: make_encoder(MAX_TOKENS, batch, precision, backend, onnx_path)
        for name, (precision, backend, batch) in CELLS.items()
        if name not in args.skip
    }
    for encode in encoders.values():
        encode(texts[:128])  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(args.rounds):
        for name, encode in encoders.items():
            started = time.perf_counter()
            encode(texts)
            rates[name].append(len(texts) / (time.perf_counter() - started))
    flags = " ".join(sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"}))
    for name, values in rates.items():
        rounds = [round(v) for v in values]
        print(f"{name}: {statistics.median(values):.0f} texts/s (rounds: {rounds}) [{flags}]")


if __name__ == "__main__":
    main()
