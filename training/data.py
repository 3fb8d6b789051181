"""Pre-tokenised corpus and the length-bucketed, resumable batch plan for training.

The corpus is tokenised once with the teacher's WordPiece tokenizer into one flat int32 array plus
offsets (cached), without [CLS]/[SEP]: the collator adds them after augmentation. The batch plan for
epoch e is a pure function of (seed, e), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.augment import AugmentConfig, augment


@dataclass(frozen=True)
class TokenizedCorpus:
    ids: np.ndarray  # int32, all texts' pieces concatenated
    offsets: np.ndarray  # int64, len = n_texts + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def tokenize_corpus(
    texts: Sequence[str], tokenizer_path: Path, max_pieces: int, cache: Path, chunk: int = 20000
) -> TokenizedCorpus:
    """Tokenise (cached at `cache`, an .npz); keeps at most `max_pieces` pieces per text."""
    if cache.exists():
        data = np.load(cache)
        return TokenizedCorpus(data["ids"], data["offsets"])
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_padding()
    tok.no_truncation()
    pieces: list[np.ndarray] = []
    for start in tqdm(range(0, len(texts), chunk), desc="tokenize", unit="chunk"):
        for enc in tok.encode_batch(list(texts[start : start + chunk]), add_special_tokens=False):
            pieces.append(np.asarray(enc.ids[:max_pieces], dtype=np.int32))
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in pieces])
    ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + ".tmp.npz")
    np.savez(tmp, ids=ids, offsets=offsets)
    tmp.replace(cache)
    return TokenizedCorpus(ids, offsets)


def continuation_mask(tokenizer_path: Path) -> np.ndarray:
    """Boolean [vocab]: True for '##' continuation pieces."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_path)).get_vocab()
    mask = np.zeros(max(vocab.values()) + 1, dtype=bool)
    for piece, idx in vocab.items():
        mask[idx] = piece.startswith("##")
    return mask


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Shuffled batches of similar-length texts: sort within windows of 64 batches, shuffle batches."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = batch_size * 64
    batches: list[np.ndarray] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size))
    rng.shuffle(batches)  # type: ignore[arg-type]
    return batches


@dataclass(frozen=True)
class Collator:
    cls_id: int
    sep_id: int
    pad_id: int
    aug: AugmentConfig | None
    is_continuation: np.ndarray

    def seqs(self, corpus: TokenizedCorpus, idx: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """The (augmented) pieces of texts `idx`, unpadded."""
        out = []
        for i in idx:
            ids = corpus.get(int(i))
            if self.aug is not None:
                ids = augment(ids, self.aug, self.is_continuation, rng)
            out.append(ids)
        return out

    def __call__(
        self, corpus: TokenizedCorpus, idx: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.pad(self.seqs(corpus, idx, rng))

    def pad(self, seqs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return pad_batch(seqs, self.cls_id, self.sep_id, self.pad_id)


@dataclass(frozen=True)
class EditIndex:
    """Which minimal-pair edits belong to which training text, to put a text and its edits in one batch."""

    order: np.ndarray  # edit indices sorted by parent
    sorted_parents: np.ndarray

    @classmethod
    def build(cls, parents: np.ndarray) -> EditIndex:
        order = np.argsort(parents, kind="stable")
        return cls(order, parents[order])

    def for_batch(
        self, idx: np.ndarray, limit: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(edit indices, position of each edit's parent in `idx`), at most `limit` edits, random subset."""
        lo = np.searchsorted(self.sorted_parents, idx, side="left")
        hi = np.searchsorted(self.sorted_parents, idx, side="right")
        edits = [self.order[a:b] for a, b in zip(lo, hi, strict=True)]
        pos = [np.full(len(e), k) for k, e in enumerate(edits)]
        if not edits:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        e, p = np.concatenate(edits).astype(np.int64), np.concatenate(pos).astype(np.int64)
        if len(e) > limit:
            keep = np.sort(rng.choice(len(e), limit, replace=False))
            e, p = e[keep], p[keep]
        return e, p


def pad_batch(
    seqs: Sequence[np.ndarray], cls_id: int, sep_id: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] ids [SEP] + right padding -> (input_ids, attention_mask), both int64 [B, T]."""
    width = max(len(s) for s in seqs) + 2
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, s in enumerate(seqs):
        n = len(s) + 2
        ids[row, 0] = cls_id
        ids[row, 1 : n - 1] = s
        ids[row, n - 1] = sep_id
        mask[row, :n] = 1
    return ids, mask


def step_batches(
    lengths: np.ndarray, batch_size: int, seed: int, start_step: int, *, rank: int = 0, world: int = 1
) -> Iterator[tuple[int, np.ndarray]]:
    """(step, this rank's indices) from `start_step` on, forever (epochs roll over)."""
    per_epoch = len(epoch_batches(lengths, batch_size, seed, 0))
    if per_epoch == 0:
        raise ValueError(f"corpus of {len(lengths)} texts is smaller than one batch of {batch_size}")
    step = start_step
    while True:
        epoch, pos = divmod(step, per_epoch)
        batches = epoch_batches(lengths, batch_size, seed, epoch)
        for b in batches[pos:]:
            yield step, b[rank::world]
            step += 1
