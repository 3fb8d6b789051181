"""Tokenizer wrapper: the bundle's Hugging Face `tokenizers` file, batch encode, truncation, token counts.

The bundle's padding/truncation settings are ignored: the batcher pads per batch, and truncation is set
here to the manifest's `max_tokens`, which keeps the `[CLS] ... [SEP]` form (the tokenizer's own
post-processor re-adds the special tokens after cutting the text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from embedder.errors import BundleError, InvalidInputError


@dataclass(frozen=True)
class Encoded:
    """Token ids of a list of texts, unpadded. `ids[i]` has `len(ids[i])` tokens incl. special tokens."""

    ids: list[list[int]]
    truncated: list[int]

    @property
    def token_counts(self) -> list[int]:
        return [len(row) for row in self.ids]


@dataclass(frozen=True)
class TokenSpans:
    """One text's tokens with where they came from (the Explain path; `Encoded` skips offsets for speed).

    `offsets[i]` are character (code point) offsets into the original text; `word_ids[i]` is the index
    of the pre-tokenizer word piece i belongs to, None for special tokens ([CLS], [SEP]).
    """

    ids: list[int]
    pieces: list[str]
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]
    truncated: bool


class TextTokenizer:
    """Thread-safe: `encode` may run in several worker threads at once (the Rust side releases the GIL)."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int, pad_token_id: int) -> None:
        self._tok = tokenizer
        self.max_tokens = max_tokens
        self.pad_token_id = pad_token_id
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_tokens)
        # encode_batch_fast skips offset tracking (~1.3x faster); older `tokenizers` lack it.
        self._encode_batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)

    @classmethod
    def from_file(cls, path: str | Path, max_tokens: int, pad_token_id: int) -> TextTokenizer:
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise BundleError(f"cannot read tokenizer {path}: {exc}") from None
        return cls(tok, max_tokens, pad_token_id)

    def encode(self, texts: Sequence[str], truncate: bool = True) -> Encoded:
        """Encode `texts`; with `truncate=False` a text over `max_tokens` raises `InvalidInputError`."""
        encodings = self._encode_batch(list(texts))
        ids: list[list[int]] = []
        truncated: list[int] = []
        for i, enc in enumerate(encodings):
            ids.append(enc.ids)
            if enc.overflowing:
                truncated.append(i)
        if truncated and not truncate:
            raise InvalidInputError(
                f"texts[{truncated[0]}]: longer than max_tokens={self.max_tokens} and truncate=false "
                f"({len(truncated)} text(s) too long)"
            )
        return Encoded(ids=ids, truncated=truncated)

    def spans(self, text: str, truncate: bool = True, field: str = "text") -> TokenSpans:
        """Encode one text keeping offsets and word ids; `field` names it in the truncate=false error."""
        enc = self._tok.encode(text)
        truncated = bool(enc.overflowing)
        if truncated and not truncate:
            raise InvalidInputError(f"{field}: longer than max_tokens={self.max_tokens} and truncate=false")
        word_ids = [
            None if special else w for w, special in zip(enc.word_ids, enc.special_tokens_mask, strict=True)
        ]
        return TokenSpans(enc.ids, enc.tokens, list(enc.offsets), word_ids, truncated)


def pad_batch(
    rows: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Right-pad token rows to the longest one: (input_ids, attention_mask), both int64 [n, max_len]."""
    max_len = max(len(r) for r in rows)
    input_ids = np.full((len(rows), max_len), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(rows), max_len), dtype=np.int64)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return input_ids, mask
