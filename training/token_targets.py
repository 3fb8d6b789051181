"""Per-token teacher targets: the teacher's last hidden state at every position of a training text.

The pooled target says where a whole text sits; these say what the teacher made of each of its tokens
in context ("not" next to "playing", the subject before the verb). The teacher's sentence embedding is
the mean of exactly these states, so a student whose per-position outputs match them has the teacher's
pooled vector too. Positions are those the student sees without augmentation: [CLS], the text's pieces
(as `training/data.py` cut them), [SEP].

Stored as one float16 memmap [positions, 384] per tokenised corpus (`<work_dir>/teacher/tokens/`),
row `offsets[i] + 2 * i + k` for position k of text i; written text chunk by text chunk with a progress
file, so an interrupted run resumes at its last whole chunk. The size is ~770 bytes per position
(~1.5 GB for 50,000 texts of ~40 pieces): meant for probes on a prefix of the corpus.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.data import TokenizedCorpus, pad_batch
from training.teacher import TEACHER_DIM, load_teacher

HiddenFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def row_offsets(corpus: TokenizedCorpus) -> np.ndarray:
    """Start row of each text's positions ([CLS] + pieces + [SEP]) in the store, len = n_texts + 1."""
    return corpus.offsets + 2 * np.arange(len(corpus.offsets), dtype=np.int64)


def make_hidden(max_tokens: int, precision: str) -> HiddenFn:
    """(input_ids, attention_mask) int64 [B, T] -> the teacher's last hidden states float32 [B, T, 384]."""
    transformer = load_teacher(max_tokens)[0].auto_model

    def hidden(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = transformer(
                input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
            ).last_hidden_state
        return out.float().numpy()  # type: ignore[no-any-return]

    return hidden


def build(
    corpus: TokenizedCorpus,
    path: Path,
    hidden: Callable[[], HiddenFn],
    special: tuple[int, int, int],
    *,
    batch_size: int = 128,
    chunk: int = 4096,
) -> np.memmap:
    """The store at `path` (float16 [rows, 384]), computing what an earlier run did not finish.

    `hidden` is called only if there is work left (loading the teacher costs seconds); `special` is
    (cls, sep, pad) as the collator uses them.
    """
    offsets = row_offsets(corpus)
    shape = (int(offsets[-1]), TEACHER_DIM)
    if path.exists():
        return np.memmap(path, dtype=np.float16, mode="r", shape=shape)
    partial = path.with_name(path.name + ".partial")
    progress = path.with_name(path.name + ".progress.json")
    done = json.loads(progress.read_text())["texts"] if progress.exists() and partial.exists() else 0
    path.parent.mkdir(parents=True, exist_ok=True)
    store = np.memmap(partial, dtype=np.float16, mode="r+" if done else "w+", shape=shape)
    if done < len(corpus):  # else an earlier run finished the last chunk but not the rename
        fn = hidden()
        with tqdm(total=len(corpus), initial=done, desc="teacher tokens", unit="text") as bar:
            for start in range(done, len(corpus), chunk):
                span = np.arange(start, min(start + chunk, len(corpus)))
                idx = span[np.argsort(corpus.lengths()[span], kind="stable")]
                for b in range(0, len(idx), batch_size):
                    rows = idx[b : b + batch_size]
                    states = fn(*pad_batch([corpus.get(int(i)) for i in rows], *special))
                    for k, i in enumerate(rows):
                        lo, hi = offsets[i], offsets[i + 1]
                        store[lo:hi] = states[k, : hi - lo]
                    bar.update(len(rows))
                store.flush()
                progress.write_text(json.dumps({"texts": int(span[-1]) + 1}))
    del store
    partial.replace(path)
    progress.unlink(missing_ok=True)
    return np.memmap(path, dtype=np.float16, mode="r", shape=shape)


def gather(
    store: np.ndarray, offsets: np.ndarray, texts: np.ndarray, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets [B, width, 384] float32 for texts `texts` laid out as `pad_batch` lays out their ids, and
    a [B, width] bool mask of the positions that hold one."""
    out = np.zeros((len(texts), width, TEACHER_DIM), np.float32)
    valid = np.zeros((len(texts), width), bool)
    for k, i in enumerate(texts):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        n = min(hi - lo, width)
        out[k, :n] = store[lo : lo + n]
        valid[k, :n] = True
    return torch.from_numpy(out), torch.from_numpy(valid)
