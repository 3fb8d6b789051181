"""Tokenizer wrapper: the bundle's Hugging Face `tokenizers` file, batch encode, truncation, token counts.

The bundle's padding/truncation settings are ignored: the batcher pads per batch, and truncation is set
here to the manifest's `max_tokens`, which keeps the `[CLS] ... [SEP]` form (the tokenizer's own
post-processor re-adds the special tokens after cutting the text).

Only `max_tokens` survive, so a long text is not tokenized whole (a 20,000-character text costs ~20x
its first 1,000 characters, and `tokenizers` builds every overflow encoding). It is cut at a boundary
the tokenizer is known to split at (`tokenizer_prefix.py`), and the cut is only trusted if the prefix
alone already overflows `max_tokens`; otherwise the prefix grows (4x) until it does or is the whole
text. The ids are then exactly those of the whole text (tests/unit/test_tokenizer.py checks this).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding, Tokenizer

from embedder.core.fast_wordpiece import FastWordPiece
from embedder.core.tokenizer_prefix import PrefixCutter
from embedder.errors import BundleError, InvalidInputError

# A JSON escape ("\ud800") or a non-UTF-8 command line (surrogateescape) gives a str with a lone
# surrogate: not text the tokenizer (or a UTF-8 wire format) can take.
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in `text`, or None."""
    found = _SURROGATE.search(text)
    return None if found is None else found.start()


# Encodes a batch of texts: `encode_batch_fast`, or `encode` of one text keeping offsets (Explain).
Encode = Callable[[list[str]], list[Encoding]]


@dataclass(frozen=True)
class Encoded:
    """Token ids of a list of texts, unpadded. `ids[i]` has `len(ids[i])` tokens incl. special tokens."""

    ids: list[list[int]]
    truncated: list[int]

    @property
    def token_counts(self) -> list[int]:
        return [len(row) for row in self.ids]

    @classmethod
    def joined(cls, parts: Sequence[Encoded]) -> Encoded:
        """The encodings of consecutive slices of one text list, as one (indices renumbered)."""
        if len(parts) == 1:
            return parts[0]
        ids: list[list[int]] = []
        truncated: list[int] = []
        for part in parts:
            truncated.extend(len(ids) + i for i in part.truncated)
            ids.extend(part.ids)
        return cls(ids, truncated)


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
    """Thread-safe: `encode` may run in several worker threads at once. Plain-ASCII texts take
    `FastWordPiece` (Python, holds the GIL, ~5x less CPU); the rest `tokenizers` (releases the GIL)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_tokens: int,
        pad_token_id: int,
        prefix_chars: int | None = None,
        fast_path: bool = True,
    ) -> None:
        """`prefix_chars`: characters tokenized first of a longer text (default 8 per kept token);
        `fast_path=False`: every text through `tokenizers` (tests of that path)."""
        self._tok = tokenizer
        self.max_tokens = max_tokens
        self.pad_token_id = pad_token_id
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_tokens)
        # encode_batch_fast skips offset tracking (~1.3x faster); older `tokenizers` lack it.
        self._encode_batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        self._cutter = PrefixCutter.for_tokenizer(tokenizer, prefix_chars or 8 * max_tokens)
        # Plain-ASCII texts of a BERT-style tokenizer skip `tokenizers` (same ids, ~5x less CPU).
        self._fast = FastWordPiece.for_tokenizer(tokenizer, max_tokens) if fast_path else None
        self._fast_chars = prefix_chars or 8 * max_tokens

    @classmethod
    def from_file(cls, path: str | Path, max_tokens: int, pad_token_id: int) -> TextTokenizer:
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise BundleError(f"cannot read tokenizer {path}: {exc}") from None
        return cls(tok, max_tokens, pad_token_id)

    def cost_chars(self, texts: Sequence[str]) -> int:
        """About how many characters `encode(texts)` will read: the admission's measure of its work
        (a prefix per long text; more only for texts with little to tokenize in their first part)."""
        return sum(self._cost(t) for t in texts)

    def _cost(self, text: str) -> int:
        return len(text) if self._cutter is None else min(len(text), self._cutter.chars)

    def jobs(self, texts: Sequence[str], max_chars: int) -> list[Sequence[str]]:
        """`texts` cut into consecutive slices of at most `max_chars` of `cost_chars` each (at least one
        text per slice), so that tokenizing a large request can be interleaved with other requests."""
        slices: list[Sequence[str]] = []
        start = cost = 0
        for i, text in enumerate(texts):
            chars = self._cost(text)
            if cost + chars > max_chars and i > start:
                slices.append(texts[start:i])
                start, cost = i, 0
            cost += chars
        slices.append(texts[start:])
        return slices

    def encode(self, texts: Sequence[str], truncate: bool = True, fast_path: bool = True) -> Encoded:
        """Encode `texts`; with `truncate=False` a text over `max_tokens` raises `InvalidInputError`.
        `fast_path=False`: every text through `tokenizers`, which releases the GIL (same ids)."""
        fast = self._fast if fast_path else None
        ids: list[list[int]] = []
        truncated: list[int] = []
        others: list[int] = []  # texts the fast path leaves to `tokenizers`
        for i, text in enumerate(texts):
            done = fast.encode(text, self._fast_chars) if fast is not None else None
            if done is None:
                others.append(i)
                ids.append([])
            else:
                ids.append(done[0])
                if done[1]:
                    truncated.append(i)
        if others:
            encodings = self._encode_kept([texts[i] for i in others], self._encode_batch, others)
            for i, enc in zip(others, encodings, strict=True):
                ids[i] = enc.ids
                if enc.overflowing:
                    truncated.append(i)
            truncated.sort()
        encoded = Encoded(ids=ids, truncated=truncated)
        if not truncate:
            self.refuse_truncated(encoded)
        return encoded

    def refuse_truncated(self, encoded: Encoded) -> None:
        """The `truncate=false` rule: `InvalidInputError` naming the first text over `max_tokens`."""
        if encoded.truncated:
            raise InvalidInputError(
                f"texts[{encoded.truncated[0]}]: longer than max_tokens={self.max_tokens} and "
                f"truncate=false ({len(encoded.truncated)} text(s) too long)"
            )

    def spans(self, text: str, truncate: bool = True, field: str = "text") -> TokenSpans:
        """Encode one text keeping offsets and word ids; `field` names it in the truncate=false error."""
        (enc,) = self._encode_kept([text], lambda batch: [self._tok.encode(batch[0])])
        truncated = bool(enc.overflowing)
        if truncated and not truncate:
            raise InvalidInputError(f"{field}: longer than max_tokens={self.max_tokens} and truncate=false")
        word_ids = [
            None if special else w for w, special in zip(enc.word_ids, enc.special_tokens_mask, strict=True)
        ]
        return TokenSpans(enc.ids, enc.tokens, list(enc.offsets), word_ids, truncated)

    def _encode_kept(
        self, texts: list[str], encode: Encode, positions: Sequence[int] | None = None
    ) -> list[Encoding]:
        """`encode` applied to the shortest prefix of each text that yields the same kept tokens;
        `positions`: where each text stands in the request (for error messages), if not 0, 1, ..."""
        positions = positions if positions is not None else range(len(texts))
        cutter = self._cutter
        chars = cutter.chars if cutter is not None else 0
        parts = [cutter.prefix(t, chars) for t in texts] if cutter is not None else list(texts)
        encodings = _checked(encode, parts, texts, positions)
        pending = [i for i, p in enumerate(parts) if len(p) < len(texts[i]) and not encodings[i].overflowing]
        while pending and cutter is not None:
            # The prefix did not fill max_tokens (much whitespace, very long words): it proves nothing.
            chars *= 4
            longer = [cutter.prefix(texts[i], chars) for i in pending]
            for i, part, enc in zip(pending, longer, _checked(encode, longer, texts, positions), strict=True):
                parts[i], encodings[i] = part, enc
            pending = [i for i in pending if len(parts[i]) < len(texts[i]) and not encodings[i].overflowing]
        return encodings


def _checked(encode: Encode, parts: list[str], texts: list[str], positions: Sequence[int]) -> list[Encoding]:
    """`encode(parts)`; a text that is not valid Unicode (a lone surrogate, e.g. from a JSON escape or a
    non-UTF-8 command line) is an `InvalidInputError` naming it, not the tokenizer's TypeError."""
    try:
        return encode(parts)
    except TypeError:
        for i, text in zip(positions, texts, strict=True):
            if (where := lone_surrogate(text)) is not None:
                raise InvalidInputError(
                    f"texts[{i}]: holds a lone surrogate (U+{ord(text[where]):04X} at character "
                    f"{where + 1}); texts must be valid Unicode"
                ) from None
        raise


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
