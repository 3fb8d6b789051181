"""The common case made fast: BERT WordPiece of a plain-ASCII text, exactly as `tokenizers` does it.

On item-length texts (20-40 words) `tokenizers` spends ~50 us per text in its normalizer, pre-tokenizer
and the Python objects of its `Encoding`, more than the CNN spends embedding it. For a text made only of
printable ASCII (plus tab, newline, carriage return), the BERT pipeline reduces to a few steps that Python's
C-level regex and a dict do several times faster:

- `BertNormalizer` (clean_text, handle_chinese_chars, lowercase, strip_accents): on such text it only
  lowercases (nothing to clean, no CJK, no accents);
- `BertPreTokenizer`: words are runs of letters and digits; every other printable character is
  punctuation, a word of its own; whitespace separates;
- `WordPiece` of each word: asked of the tokenizer's own model (`Tokenizer.model.tokenize`) the first time
  a word is seen and remembered (a bounded dict), so the pieces are the model's by construction;
- `[CLS] ... [SEP]` around the first `max_tokens - 2` pieces (truncation keeps the start).

A long text is read only as far as its kept pieces go (as `tokenizer_prefix.py` does for `tokenizers`),
and only that part need be plain ASCII. Any other text (non-ASCII, control characters, a character an
added token such as `[MASK]` starts with, in the part that is read) returns None and takes the
`tokenizers` path; so does every text of a tokenizer whose pipeline is not
exactly this one (`FastWordPiece.for_tokenizer` returns None). tests/unit/test_fast_wordpiece.py checks
the ids against `tokenizers` on real item texts and on generated ones.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tokenizers import Tokenizer

# Letters/digits runs, or one printable ASCII punctuation character (BERT's split rule on ASCII).
_WORDS = re.compile(r"[A-Za-z0-9]+|[!-/:-@\[-`{-~]")
# The words of a text cut at `chars`: the last one may be cut through, so it is never trusted.
_MAX_WORDS_CACHED = 1 << 17  # ~20 MB at most; cleared when full (item vocabularies are far smaller)


class FastWordPiece:
    """Token ids of plain-ASCII texts for a BERT-style tokenizer, identical to `Tokenizer.encode`'s."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int, cls_id: int, sep_id: int, refuse: str) -> None:
        self._model = tokenizer.model
        self._keep = max_tokens - 2  # pieces kept between [CLS] and [SEP]
        self._cls, self._sep = cls_id, sep_id
        # What sends a text to `tokenizers`: anything but tab/newline/CR/printable ASCII, or a character
        # an added token starts with (those are matched in the raw text, before normalization).
        allowed = "".join(c for c in map(chr, range(0x20, 0x7F)) if c not in refuse)
        self._other = re.compile(f"[^\t\n\r{re.escape(allowed)}]")
        self._pieces: dict[str, list[int]] = {}

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, max_tokens: int) -> FastWordPiece | None:
        """The fast path for `tokenizer`, or None when its pipeline is not the BERT one it reproduces."""
        try:
            config: dict[str, Any] = json.loads(tokenizer.to_str())
        except Exception:  # a tokenizer that cannot describe itself: keep to `tokenizers`
            return None
        normalizer = config.get("normalizer") or {}
        pre = config.get("pre_tokenizer") or {}
        model = config.get("model") or {}
        post = config.get("post_processor") or {}
        if not (
            normalizer.get("type") == "BertNormalizer"
            and normalizer.get("lowercase") is True
            and pre.get("type") == "BertPreTokenizer"
            and model.get("type") == "WordPiece"
            and max_tokens >= 2
        ):
            return None
        specials = _cls_sep(post)
        if specials is None:
            return None
        cls_id, sep_id = specials
        # Added tokens are matched before the normalizer lowercases: refuse both cases of their first letter.
        firsts = {t["content"][:1] for t in config.get("added_tokens") or [] if t.get("content")}
        refuse = "".join(sorted({c for f in firsts for c in (f, f.lower(), f.upper())}))
        return cls(tokenizer, max_tokens, cls_id, sep_id, refuse)

    def encode(self, text: str, cut_chars: int) -> tuple[list[int], bool] | None:
        """(ids with [CLS]/[SEP], truncated?) or None if `text` must take the `tokenizers` path.

        Only the first `cut_chars` characters are read (and need be plain ASCII) when they already hold
        more pieces than are kept: the word they cut through is dropped, and nothing after a word can
        change how it is tokenized (the normalizer and the pre-tokenizer work character by character,
        splitting at whitespace and punctuation). Otherwise the whole text is read."""
        if len(text) > cut_chars and self._other.search(text, 0, cut_chars) is None:
            pieces = self._pieces_of(_WORDS.findall(text, 0, cut_chars)[:-1])
            if len(pieces) > self._keep:
                return [self._cls, *pieces[: self._keep], self._sep], True
        if self._other.search(text) is not None:
            return None
        pieces = self._pieces_of(_WORDS.findall(text))
        return [self._cls, *pieces[: self._keep], self._sep], len(pieces) > self._keep

    def _pieces_of(self, words: list[str]) -> list[int]:
        out: list[int] = []
        known = self._pieces
        for word in words:
            ids = known.get(word)
            if ids is None:
                if len(known) >= _MAX_WORDS_CACHED:
                    known.clear()
                ids = known[word] = [t.id for t in self._model.tokenize(word.lower())]
            out += ids
        return out


def _cls_sep(post: dict[str, Any]) -> tuple[int, int] | None:
    """The ids of the special tokens a post-processor puts around one sequence, if it is `[CLS] $A [SEP]`
    in form (BertProcessing, or TemplateProcessing with one id per special token)."""
    if post.get("type") == "BertProcessing":
        return int(post["cls"][1]), int(post["sep"][1])
    if post.get("type") != "TemplateProcessing":
        return None
    single = post.get("single") or []
    if len(single) != 3 or "Sequence" not in single[1]:
        return None
    ids = []
    for step in (single[0], single[2]):
        name = step.get("SpecialToken", {}).get("id")
        token_ids = (post.get("special_tokens") or {}).get(name, {}).get("ids") or []
        if len(token_ids) != 1:
            return None
        ids.append(int(token_ids[0]))
    return ids[0], ids[1]
