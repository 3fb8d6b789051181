"""Meaning-changing edits of a sentence ("minimal pairs"): negation, swapped roles, antonyms, numbers,
word order.

v1 read "a man is playing" and "no man is playing" as paraphrases (cosine 0.92 where the teacher says
0.76): nothing in its data asked it to tell such texts apart. The training job gives every edit the
teacher's embedding of the *edited* text as its target and puts a text and its edits in one batch, so
the relational and pair terms see exactly the differences the teacher sees. The same generator, run on
held-out sentences, builds the compositional check (`training/checks.py`).

Edits are word-level and heuristic (no parser): some read oddly ("A guitar is playing a man"), which is
fine — the teacher labels whatever the edit produced, and the student must follow it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KINDS = ("negation", "swap", "antonym", "number", "shuffle")
_AUX_NEG = {
    "is": "is not",
    "are": "are not",
    "was": "was not",
    "were": "were not",
    "can": "cannot",
    "will": "will not",
    "could": "could not",
    "would": "would not",
    "should": "should not",
    "does": "does not",
    "did": "did not",
    "do": "do not",
    "has": "has not",
    "have": "have not",
    "must": "must not",
    "may": "may not",
}
_NEG_REMOVE = [
    (r"\bcannot\b", "can"),
    (r"\bcan't\b", "can"),
    (r"\bwon't\b", "will"),
    (r"\b(is|are|was|were|does|did|do|has|have|could|would|should|must)n't\b", r"\1"),
    (r"\b(is|are|was|were|does|did|do|has|have|could|would|should|must|will|may) not\b", r"\1"),
    (r"\bnever\b", "always"),
    (r"\bnobody\b", "somebody"),
    (r"\bnothing\b", "something"),
    (r"\bno one\b", "someone"),
    (r"\b[Nn]o\b(?= \w)", "a"),
]
_DETERMINERS = {"a", "an", "the", "two", "three", "four", "some", "his", "her", "their", "my", "your", "our"}
# Words that never head a noun phrase: a determiner followed by an adjective and one of these ("the
# right to ...") keeps the adjective as the phrase's head.
_FUNCTION = {
    "to",
    "of",
    "in",
    "on",
    "at",
    "by",
    "for",
    "with",
    "from",
    "and",
    "or",
    "but",
    "is",
    "are",
    "was",
    "were",
    "be",
    "that",
    "which",
    "who",
    "as",
    "into",
    "over",
    "under",
    "than",
    "it",
    "its",
    "not",
}
_NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve"]
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_NUMBER = re.compile(r"\b\d{1,4}\b")


@dataclass(frozen=True)
class Edit:
    text: str
    kind: str


def _cap_like(word: str, like: str) -> str:
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


def negate(text: str) -> str | None:
    """Remove the sentence's negation if it has one, else add one (aux + not, or "A X" -> "No X")."""
    for pattern, repl in _NEG_REMOVE:
        edited, n = re.subn(pattern, repl, text, count=1)
        if n:
            return edited
    words = text.split(" ")
    for i, word in enumerate(words):
        neg = _AUX_NEG.get(word.lower())
        if neg is not None and i > 0:
            words[i] = _cap_like(neg, word)
            return " ".join(words)
    if words and words[0].lower() in {"a", "an", "the"} and len(words) > 2:
        return " ".join(["No", *words[1:]])
    return None


def _head(words: list[str], i: int, adjectives: frozenset[str]) -> int | None:
    """Index of the noun a determiner at `i` introduces: the next word, or the one after an adjective."""
    strip = ".,;:!?"
    nxt = [j for j in (i + 1, i + 2) if j < len(words) and _WORD.fullmatch(words[j].rstrip(strip))]
    if not nxt or nxt[0] != i + 1:
        return None
    first = words[i + 1]
    second = words[i + 2].rstrip(strip).lower() if len(nxt) == 2 else ""
    if first.rstrip(strip) == first and first.lower() in adjectives and second and second not in _FUNCTION:
        return i + 2
    return i + 1


def swap_roles(text: str, adjectives: frozenset[str] = frozenset()) -> str | None:
    """Swap the nouns of the first two determiner phrases: "A dog chases a cat" -> "A cat chases a dog"."""
    words = text.split(" ")
    heads: list[int] = []
    for i, word in enumerate(words[:-1]):
        head = _head(words, i, adjectives) if word.lower() in _DETERMINERS else None
        if head is not None and (not heads or head - heads[-1] >= 3):
            heads.append(head)
    if len(heads) < 2:
        return None
    a, b = heads[0], heads[1]
    core_a, core_b = words[a].rstrip(".,;:!?"), words[b].rstrip(".,;:!?")
    if core_a.lower() == core_b.lower():
        return None
    words[a], words[b] = core_b + words[a][len(core_a) :], core_a + words[b][len(core_b) :]
    return " ".join(words)


def change_number(text: str, rng: np.random.Generator) -> str | None:
    """Replace one number (digits or a number word) with a different one."""
    match = _NUMBER.search(text)
    if match:
        value = int(match.group())
        new = value + int(rng.choice([-1, 1])) * max(1, int(value * rng.uniform(0.2, 1.0)))
        return text[: match.start()] + str(max(0, new) if new != value else value + 1) + text[match.end() :]
    words = text.split(" ")
    for i, word in enumerate(words):
        core = word.lower().rstrip(".,;:!?")
        if core in _NUMBER_WORDS:
            other = str(rng.choice([w for w in _NUMBER_WORDS if w != core]))
            words[i] = _cap_like(other, word) + word[len(core) :]
            return " ".join(words)
    return None


def shuffle_words(text: str, rng: np.random.Generator) -> str | None:
    """Swap two content words (>= 3 letters, different) at random."""
    words = text.split(" ")
    content = [i for i, w in enumerate(words) if len(w.strip(".,;:!?")) >= 3 and w.strip(".,;:!?").isalpha()]
    if len(content) < 2:
        return None
    i, j = sorted(int(x) for x in rng.choice(content, 2, replace=False))
    wi, wj = words[i].strip(".,;:!?"), words[j].strip(".,;:!?")
    if wi.lower() == wj.lower():
        return None
    words[i] = words[i].replace(wi, wj, 1)
    words[j] = words[j].replace(wj, wi, 1)
    return " ".join(words)


class Antonyms:
    """Single-word antonym pairs from WordNet's "!" pointers (adjectives, adverbs, nouns, verbs)."""

    def __init__(self, pairs: dict[str, list[str]], adjectives: frozenset[str] = frozenset()) -> None:
        self.pairs = pairs
        self.adjectives = adjectives

    @classmethod
    def from_wordnet(cls, wordnet_dir: Path = Path("/usr/share/wordnet")) -> Antonyms:
        if not (wordnet_dir / "data.adj").is_file():
            raise FileNotFoundError(
                f"antonym edits need WordNet ({wordnet_dir}/data.*): run scripts/install_corpus_sources.sh, "
                "or set [pairs] antonyms = false"
            )
        pairs: dict[str, set[str]] = {}
        for pos in ("adj", "adv", "noun", "verb"):
            path = wordnet_dir / f"data.{pos}"
            words_of: dict[str, list[str]] = {}
            pointers: list[tuple[str, int, str, int]] = []
            with path.open(encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.startswith(" "):
                        continue
                    fields = line.split(" | ")[0].split(" ")
                    offset, count = fields[0], int(fields[3], 16)
                    lemmas = [re.sub(r"\(.*\)$", "", fields[4 + 2 * i]) for i in range(count)]
                    words_of[offset] = lemmas
                    at = 4 + 2 * count
                    for p in range(int(fields[at])):
                        sym, target, _, st = fields[at + 1 + 4 * p : at + 5 + 4 * p]
                        if sym == "!":
                            pointers.append((offset, int(st[:2], 16), target, int(st[2:], 16)))
            for offset, src, target, dst in pointers:
                if src == 0 or dst == 0 or target not in words_of:
                    continue
                a, b = words_of[offset][src - 1], words_of[target][dst - 1]
                if a.isalpha() and b.isalpha():
                    pairs.setdefault(a.lower(), set()).add(b.lower())
        adjectives = frozenset(
            line.split(" ", 1)[0]
            for line in (wordnet_dir / "index.adj").read_text(encoding="utf-8", errors="replace").splitlines()
            if not line.startswith(" ") and "_" not in line.split(" ", 1)[0]
        )
        return cls({k: sorted(v) for k, v in pairs.items()}, adjectives)

    def substitute(self, text: str, rng: np.random.Generator) -> str | None:
        words = text.split(" ")
        spots = [i for i, w in enumerate(words) if w.strip(".,;:!?").lower() in self.pairs]
        if not spots:
            return None
        i = int(rng.choice(spots))
        core = words[i].strip(".,;:!?")
        other = str(rng.choice(self.pairs[core.lower()]))
        words[i] = words[i].replace(core, _cap_like(other, core), 1)
        return " ".join(words)


def eligible(text: str, max_words: int = 40) -> bool:
    """Sentence-like texts only: 4..max_words words, not a "lemma: gloss" dictionary line."""
    words = text.split()
    return 4 <= len(words) <= max_words and ":" not in " ".join(words[:4])


def _rng_for(text: str, seed: int) -> np.random.Generator:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest, "big"))


def make_edits(
    text: str, antonyms: Antonyms, seed: int, max_edits: int = 2, kinds: Sequence[str] = KINDS
) -> list[Edit]:
    """Up to `max_edits` edits of different kinds, chosen deterministically from (text, seed)."""
    rng = _rng_for(text, seed)
    makers: dict[str, Callable[[], str | None]] = {
        "negation": lambda: negate(text),
        "swap": lambda: swap_roles(text, antonyms.adjectives),
        "antonym": lambda: antonyms.substitute(text, rng),
        "number": lambda: change_number(text, rng),
        "shuffle": lambda: shuffle_words(text, rng),
    }
    order = [str(k) for k in rng.permutation(list(kinds))]
    # Negation and swapped roles are where v1 fails most: try them first when they apply.
    order.sort(key=lambda k: 0 if k in ("negation", "swap") else 1)
    edits: list[Edit] = []
    for kind in order:
        edited = makers[kind]()
        if edited and edited != text and all(e.text != edited for e in edits):
            edits.append(Edit(edited, kind))
        if len(edits) >= max_edits:
            break
    return edits


def edits_for_corpus(
    texts: Sequence[str], antonyms: Antonyms, seed: int, fraction: float, max_edits: int
) -> Iterator[tuple[int, Edit]]:
    """(parent index, edit) for a deterministic `fraction` of the eligible texts."""
    taken = {t.casefold() for t in texts}
    for i, text in enumerate(texts):
        if not eligible(text) or _rng_for(text, seed + 1).random() >= fraction:
            continue
        for edit in make_edits(text, antonyms, seed, max_edits):
            key = edit.text.casefold()
            if key not in taken:
                taken.add(key)
                yield i, edit
