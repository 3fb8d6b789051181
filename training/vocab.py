"""The teacher's WordPiece vocabulary as the training job uses it: special-token ids read from the
tokenizer (never hard-coded), texts to pieces, pieces to padded model inputs.

Pieces are token ids *without* [CLS]/[SEP]: augmentation works on them, and `batch()` adds the wrappers
and right padding exactly as the serving runtime does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from training.data import pad_batch
from training.teacher import teacher_tokenizer_path


@dataclass(frozen=True)
class Vocab:
    path: Path
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int

    @classmethod
    def load(cls, path: Path) -> Vocab:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path))
        ids = {name: tok.token_to_id(name) for name in ("[CLS]", "[SEP]", "[PAD]", "[MASK]")}
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"{path}: the tokenizer has no {missing} token")
        return cls(path, ids["[CLS]"], ids["[SEP]"], ids["[PAD]"], ids["[MASK]"])

    def pieces(self, texts: Sequence[str], max_tokens: int) -> list[np.ndarray]:
        """Each text's ids without [CLS]/[SEP], cut so that the wrapped sequence fits `max_tokens`."""
        tok = _tokenizer(self.path)
        encs = tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids[: max_tokens - 2], dtype=np.int64) for e in encs]

    def batch(self, pieces: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """[CLS] ids [SEP] + right padding -> (input_ids, attention_mask), int64 [B, T]."""
        return pad_batch(pieces, self.cls_id, self.sep_id, self.pad_id)


@cache
def _tokenizer(path: Path):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    return tok


@cache
def teacher_vocab() -> Vocab:
    """The vocabulary of the teacher (and so of every student distilled from it)."""
    return Vocab.load(teacher_tokenizer_path())
