"""Where a long text may be cut before tokenizing without changing the tokens before the cut.

Only `max_tokens` tokens of a text are kept, so tokenizing all of a 20,000-character text is wasted work
(and `tokenizers` builds every overflow encoding of it). A prefix can stand in for the text if every
token of the prefix, except possibly the last word's, is a token of the whole text. That holds for a cut
just before a character that the tokenizer always splits at and that never changes how the characters
before it are read:

- BertNormalizer works one character at a time (clean-up, CJK spacing, lowercase, NFD and dropping
  accents: canonical reordering only moves combining marks, and none of the boundary characters is one);
- BertPreTokenizer splits at whitespace and isolates every punctuation character, and the normalizer
  puts spaces around CJK ideographs, so words never span such a character;
- no added token ([CLS], [MASK], ...) contains the character, so no special-token match spans the cut.

Other tokenizers get no cutter (their texts are tokenized whole), since these facts would need checking
for each. `TextTokenizer` trusts a cut only once the prefix alone overflows `max_tokens`, so whatever
the cut did to the prefix's last word lies beyond the kept tokens.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from tokenizers import Tokenizer
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

_WHITESPACE = " \t\n\r"  # the normalizer maps these to a space; other "spaces" may be dropped instead
# CJK ideograph blocks that BertNormalizer(handle_chinese_chars=True) surrounds with spaces (a subset
# of its list is enough: a missing block only means fewer places to cut).
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"


@dataclass(frozen=True)
class PrefixCutter:
    """Cuts texts at the first safe boundary at or after a number of characters."""

    boundary: re.Pattern[str]
    chars: int  # characters tried first

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, chars: int) -> PrefixCutter | None:
        """A cutter if the tokenizer's pipeline is one whose boundaries are known (see above), else None."""
        normalizer, pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
        if not isinstance(pre_tokenizer, BertPreTokenizer):
            return None
        if normalizer is not None and not isinstance(normalizer, BertNormalizer):
            return None
        cjk = normalizer is not None and bool(normalizer.handle_chinese_chars)
        in_added = {c for token in tokenizer.get_added_tokens_decoder().values() for c in token.content}
        singles = "".join(c for c in _WHITESPACE + string.punctuation if c not in in_added)
        if any(0x3400 <= ord(c) <= 0xFAFF for c in in_added):
            cjk = False  # an added token with an ideograph in it: stay on the safe side
        pattern = "[" + re.escape(singles) + (_CJK if cjk else "") + "]"
        return cls(re.compile(pattern), max(1, chars))

    def prefix(self, text: str, chars: int) -> str:
        """`text` up to the first boundary at or after `chars` characters; the whole text if none."""
        if len(text) <= chars:
            return text
        found = self.boundary.search(text, chars)
        return text if found is None else text[: found.start()]
