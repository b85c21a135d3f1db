"""Word-order perturbations: FSC-CLIP's bi-gram shuffle and ARO's four ``TextShuffler`` perturbations.

ARO (``mertyg/vision-language-models-are-bows``, ``dataset_zoo/perturbations.py``): outputs are the
shuffled tokens joined by single spaces, casing untouched; ARO lower-cases and strips punctuation only
afterwards, with ``pre_caption`` on both the positive and the perturbed captions (``aro_pre_caption``
here). A permutation is "equal to the input" when the lower-cased token sequence is unchanged; such a
draw is redrawn up to ``MAX_RETRIES`` times, then None (ARO keeps unchanged captions; training wants
real negatives). numpy's global RNG is replaced by the per-sample ``random.Random``: same uniform
permutations, different streams.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence

from .analysis import Analysis
from .base import MAX_RETRIES, Generator

NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
ADJ_TAGS = frozenset({"JJ", "JJR", "JJS"})
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def aro_pre_caption(caption: str, max_words: int = 50) -> str:
    """ARO's ``pre_caption``: lower-case, drop ``.!"()*#:;~``, squeeze spaces, keep ``max_words`` words."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    return " ".join(caption.split(" ")[:max_words])


@functools.lru_cache(maxsize=65536)
def aro_word_tokenize(text: str) -> tuple[str, ...]:
    """``nltk.word_tokenize`` without the punkt model (which cannot be downloaded here).

    Sentences are split after ``.``, ``!`` or ``?`` followed by whitespace, then each goes through
    NLTK's ``NLTKWordTokenizer``, what ``word_tokenize`` applies to every punkt sentence: identical for
    single-sentence captions; punkt would not split after abbreviations such as "Dr.".
    """
    from nltk.tokenize import NLTKWordTokenizer

    tokenizer = _tokenizer(NLTKWordTokenizer)
    return tuple(
        token for sentence in _SENTENCE_END.split(text.strip()) if sentence for token in tokenizer.tokenize(sentence)
    )


@functools.lru_cache(maxsize=1)
def _tokenizer(cls: type) -> object:
    return cls()


def trigrams(tokens: Sequence[str]) -> list[list[str]]:
    """Consecutive non-overlapping groups of 3 (the last may be shorter), as ARO's ``get_trigrams``."""
    return [list(tokens[i : i + 3]) for i in range(0, len(tokens), 3)]


def _lower(tokens: Sequence[str]) -> list[str]:
    return [t.lower() for t in tokens]


def _shuffle_positions(tokens: list[str], groups: Sequence[Sequence[int]], rng: random.Random) -> str | None:
    """Permute the tokens at each index group (independently) until the sequence changes."""
    groups = [g for g in groups if len({tokens[i].lower() for i in g}) > 1]
    if not groups:
        return None
    original = _lower(tokens)
    for _ in range(1 + MAX_RETRIES):
        out = list(tokens)
        for group in groups:
            values = [tokens[i] for i in group]
            rng.shuffle(values)
            for i, value in zip(group, values):
                out[i] = value
        if _lower(out) != original:
            return " ".join(out)
    return None


class ShuffleNounsAndAdj(Generator):
    """ARO: permute the nouns (NN, NNS, NNP, NNPS) among themselves, then the adjectives (JJ, JJR, JJS)."""

    name = "shuffle_nouns_and_adj"

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        a = self.analyze(caption)
        nouns = [i for i, t in enumerate(a.tag) if t in NOUN_TAGS]
        adjectives = [i for i, t in enumerate(a.tag) if t in ADJ_TAGS]
        return self.differs(_shuffle_positions(list(a.words), [nouns, adjectives], rng), caption)


class ShuffleAllButNounsAndAdj(Generator):
    """ARO: permute every token that is not a noun or an adjective (punctuation included), as one group."""

    name = "shuffle_allbut_nouns_and_adj"

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        a = self.analyze(caption)
        others = [i for i, t in enumerate(a.tag) if t not in NOUN_TAGS and t not in ADJ_TAGS]
        return self.differs(_shuffle_positions(list(a.words), [others], rng), caption)


class ShuffleWithinTrigrams(Generator):
    """ARO: NLTK word tokens in consecutive trigrams, each trigram shuffled internally."""

    name = "shuffle_within_trigrams"

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        tokens = list(aro_word_tokenize(caption))
        groups = [list(range(i, min(i + 3, len(tokens)))) for i in range(0, len(tokens), 3)]
        return self.differs(_shuffle_positions(tokens, groups, rng), caption)


class ShuffleTrigrams(Generator):
    """ARO: NLTK word tokens in consecutive trigrams, the order of the trigrams shuffled."""

    name = "shuffle_trigrams"

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        tokens = aro_word_tokenize(caption)
        groups = trigrams(tokens)
        if len({tuple(_lower(g)) for g in groups}) < 2:
            return None
        original = _lower(tokens)
        for _ in range(1 + MAX_RETRIES):
            order = list(groups)
            rng.shuffle(order)
            out = [t for group in order for t in group]
            if _lower(out) != original:
                return self.differs(" ".join(out), caption)
        return None


def _join_group(a: Analysis, group: Sequence[int]) -> str:
    """FSC-CLIP's ``_join_tokens``: a space before every token but the first and punctuation."""
    return "".join((" " if k and a.pos[i] != "PUNCT" else "") + a.words[i] for k, i in enumerate(group))


class BigramShuffle(Generator):
    """FSC-CLIP bi-gram shuffle (``ngram_shuffler.py``, n=2) over spaCy tokens.

    Tokens 0-1, 2-3, ... form fixed groups (the last may be a single token; whitespace tokens are
    skipped); the groups are shuffled and joined with single spaces (inside a group, no space before
    punctuation). A caption-final punctuation token is set aside and re-attached at the end. A shuffle
    whose token sequence equals the original, or whose text does after ``normalize`` ("a dog a Dog"), is
    redrawn up to ``MAX_RETRIES`` times, then None; fewer than 2 groups gives None.
    Deliberate difference: FSC-CLIP sets the final punctuation aside only when it forms a group on its
    own and re-inserts it at a random position; here it always stays last. The equality test compares
    token sequences directly instead of re-parsing the shuffled text with spaCy.
    """

    name = "bigram_shuffle"

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        a = self.analyze(caption)
        tokens = [i for i, p in enumerate(a.pos) if p != "SPACE"]  # stray whitespace tokens ("\n")
        final = ""
        if tokens and a.pos[tokens[-1]] == "PUNCT":
            final = a.words[tokens.pop()]
        groups = [tuple(tokens[k : k + 2]) for k in range(0, len(tokens), 2)]
        if len(groups) < 2:
            return None
        original = [a.words[i] for i in tokens]
        for _ in range(1 + MAX_RETRIES):
            order = list(groups)
            rng.shuffle(order)
            if [a.words[i] for group in order for i in group] != original:
                out = self.differs(" ".join(_join_group(a, group) for group in order) + final, caption)
                if out is not None:
                    return out
        return None
