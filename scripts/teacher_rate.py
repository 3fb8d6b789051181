"""The teacher's encoding rate at bf16 and fp32 on the same training texts, interleaved in rounds.

    python scripts/teacher_rate.py [--work-dir .cache] [--texts 2048] [--rounds 2]

Reads the first `--texts` texts of the v2 corpus (`<work-dir>/corpus/cnn5m-v2/train.jsonl`, built by
`make data`) and prints texts/s per precision with the CPU flags. bf16 is only native with AVX512_BF16
or AMX (elsewhere it is emulated, and `precision = "auto"` picks fp32: training/teacher.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from training.teacher import cpu_flags, make_encoder

MAX_TOKENS = 128
BATCH = 128  # the config's teacher batch size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default=".cache")
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    corpus = Path(args.work_dir) / "corpus" / "cnn5m-v2" / "train.jsonl"
    with corpus.open(encoding="utf-8") as lines:
        texts = [json.loads(line)["text"] for _, line in zip(range(args.texts), lines, strict=False)]
    encoders = {p: make_encoder(MAX_TOKENS, BATCH, p) for p in ("bf16", "fp32")}
    for encode in encoders.values():
        encode(texts[:BATCH])  # warm-up
    rates: dict[str, list[float]] = {p: [] for p in encoders}
    for _ in range(args.rounds):
        for precision, encode in encoders.items():
            started = time.perf_counter()
            encode(texts)
            rates[precision].append(len(texts) / (time.perf_counter() - started))
    flags = " ".join(sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"}))
    for precision, values in rates.items():
        rounds = [round(v) for v in values]
        print(f"{precision}: {statistics.median(values):.0f} texts/s (rounds: {rounds}) [{flags}]")


if __name__ == "__main__":
    main()
