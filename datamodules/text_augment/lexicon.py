"""WordNet lookups with per-process caches, inflection (lemminflect) and casing helpers.

Replacement candidates follow FSC-CLIP's re-implementation of SugarCrepe's REPLACE
(``ytaek-oh/fsc-clip``, ``text_negatives_data.py``): antonyms of every synset of the word, plus
"cousin" co-hyponyms (hypernym -> hypernym -> hyponyms -> hyponyms, the synset itself excluded);
adjectives go through their derivationally related nouns and back; a candidate is dropped when its
name is a lemma of any synset of the word; weights add up ``max(lemma.count(), 1)`` (cntlist.rev)
over every path that reaches a name. Deliberate differences: candidates equal to the word up to case
are dropped too, and candidates are sorted by name (NLTK 3.10 keeps WordNet pointers in sets, so the
traversal order changes with ``PYTHONHASHSEED``; sorting makes the draws reproducible).
"""

from __future__ import annotations

import bisect
import random
import sys
from array import array
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Any

from lemminflect import getInflection

from .prepositions import PREPOSITION_WEIGHTS
from .resources import load_wordnet

# spaCy coarse POS -> WordNet POS, as FSC-CLIP's ``_spacy_to_wordnet_pos``.
WORDNET_POS = {"NOUN": "n", "PRON": "n", "PROPN": "n", "VERB": "v", "ADJ": "a", "ADV": "r"}
# Penn tags lemminflect can inflect to (others are left as they are).
# NLTK's synset cache is cleared past this many synsets (~3 KB each: ~90 MB); tables are kept.
MAX_CACHED_SYNSETS = 30_000
INFLECTABLE_TAGS = frozenset("NN NNS NNP NNPS VB VBD VBG VBN VBP VBZ JJ JJR JJS RB RBR RBS".split())


class Candidates:
    """Weighted candidate strings: ``names`` (interned, shared across tables) with cumulative integer
    weights (a compact ``array``) for O(log n) sampling."""

    __slots__ = ("names", "cum_weights")

    def __init__(self, weighted: Sequence[tuple[str, int]]) -> None:
        self.names = tuple(sys.intern(name) for name, _ in weighted)
        self.cum_weights = array("q", accumulate(weight for _, weight in weighted))

    def __len__(self) -> int:
        return len(self.names)

    def draw(self, rng: random.Random) -> int:
        """Index of one candidate, drawn with probability proportional to its weight."""
        return bisect.bisect_right(self.cum_weights, rng.random() * self.cum_weights[-1])

    def draw_distinct(self, rng: random.Random, k: int) -> list[int]:
        """``k`` distinct indices, weighted sampling without replacement (redraw on repeats)."""
        k = min(k, len(self.names))
        chosen: list[int] = []
        for _ in range(64 * k):
            if len(chosen) == k:
                return chosen
            i = self.draw(rng)
            if i not in chosen:
                chosen.append(i)
        # Pathological weights (one candidate holds nearly all mass): renormalise exactly.
        while len(chosen) < k:
            rest = [i for i in range(len(self.names)) if i not in chosen]
            weights = [self.cum_weights[i] - (self.cum_weights[i - 1] if i else 0) for i in rest]
            chosen.append(rng.choices(rest, weights=weights)[0])
        return chosen


def inflect(lemma: str, tag: str) -> str:
    """``lemma`` inflected to the Penn ``tag`` with lemminflect (pyinflect's successor, same tables).

    Multi-word lemmas inflect their head: the last word for nouns ("ice creams"), the first for verbs
    ("taking off"). A single lower-case word lemminflect does not know gets its regular-rule form
    ("meanie" -> "meanies"; FSC-CLIP leaves it as is); other unknown words and tags are unchanged.
    """
    if tag not in INFLECTABLE_TAGS:
        return lemma
    words = lemma.split(" ")
    at = 0 if tag.startswith("VB") else len(words) - 1
    forms = getInflection(words[at], tag=tag, inflect_oov=False)
    if not forms and len(words) == 1 and lemma.isalpha() and lemma.islower():
        forms = getInflection(lemma, tag=tag, inflect_oov=True)
    if forms:
        words[at] = forms[0]
    return " ".join(words)


def match_case(new: str, original: str) -> str:
    """Carry the casing of ``original`` over: ALL CAPS stays all caps, a capital initial stays capital."""
    if len(original) > 1 and original.isupper():
        return new.upper()
    if original[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


class Lexicon:
    """Cached WordNet queries. Picklable: the database is reloaded lazily in each process."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._counts: dict[str, int] | None = None
        self._replacements: dict[tuple[str, str], Candidates] = {}
        self._by_synsets: dict[tuple[str, ...], Candidates] = {}
        self._synonyms: dict[tuple[str, str, str], Candidates] = {}
        self._phrasal: dict[str, bool] = {}
        self._prepositions: dict[str, Candidates] = {}

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._reset()

    @property
    def wordnet(self) -> Any:
        """This process's reader (``load_wordnet`` caches one per process: a forked worker must not read
        through its parent's open files)."""
        return load_wordnet()

    def lemma_count(self, lemma: Any) -> int:
        """``lemma.count()`` (tagged-sense frequency from cntlist.rev), read once into a dict."""
        if self._counts is None:
            counts: dict[str, int] = {}
            with self.wordnet.open("cntlist.rev") as fp:
                for line in fp:
                    key, _, count = line.split()
                    counts[key] = int(count)
            self._counts = counts
        return self._counts.get(lemma.key(), 0)

    def _cousin_lemmas(self, synset: Any) -> Iterator[Any]:
        """Lemmas of the synsets two levels up and two levels down, the synset itself excluded."""
        for parent in synset.hypernyms():
            for grandparent in parent.hypernyms():
                for uncle in grandparent.hyponyms():
                    for cousin in uncle.hyponyms():
                        if cousin != synset:
                            yield from cousin.lemmas()

    def _trim_reader_cache(self) -> None:
        """NLTK keeps every synset it ever built; drop them past ``MAX_CACHED_SYNSETS`` (memory bound)."""
        cache = getattr(self.wordnet, "_synset_offset_cache", None)
        if isinstance(cache, dict) and sum(len(v) for v in cache.values()) > MAX_CACHED_SYNSETS:
            cache.clear()

    def _co_hyponyms(self, synset: Any) -> Iterator[Any]:
        """Cousin lemmas; adjectives via their derivationally related nouns and back (FSC-CLIP)."""
        if synset.pos() not in ("a", "s"):
            yield from self._cousin_lemmas(synset)
            return
        nouns = {
            related.synset().name(): related.synset()
            for lemma in synset.lemmas()
            for related in lemma.derivationally_related_forms()
            if related.synset().pos() == "n"
        }
        for _, noun in sorted(nouns.items()):
            for lemma in self._cousin_lemmas(noun):
                for related in lemma.derivationally_related_forms():
                    if related.synset() != synset and related.synset().pos() in ("a", "s"):
                        yield related

    def replacements(self, word: str, pos: str) -> Candidates:
        """Antonyms and co-hyponyms of ``word`` (WordNet ``pos``), weighted by lemma counts.

        Cached per (word, pos), and shared by words with the same synsets ("dog" / "dogs").
        """
        key = (word.lower(), pos)
        table = self._replacements.get(key)
        if table is None:
            synsets = self.wordnet.synsets(key[0], pos)
            by_synsets = (pos, *(synset.name() for synset in synsets))
            table = self._by_synsets.get(by_synsets)
            if table is None:
                table = self._by_synsets[by_synsets] = self._build_replacements(synsets)
                self._trim_reader_cache()
            self._replacements[key] = table
        return table

    def _build_replacements(self, synsets: Sequence[Any]) -> Candidates:
        synonyms = {lemma.name() for synset in synsets for lemma in synset.lemmas()}
        blocked = {name.lower() for name in synonyms}
        weights: dict[str, int] = {}
        for synset in synsets:
            antonyms = [antonym for lemma in synset.lemmas() for antonym in lemma.antonyms()]
            for lemma in (*antonyms, *self._co_hyponyms(synset)):
                name = lemma.name()
                if name not in synonyms and name.lower() not in blocked:
                    weights[name] = weights.get(name, 0) + max(self.lemma_count(lemma), 1)
        # Sorted: NLTK keeps pointers in sets, so traversal order changes with PYTHONHASHSEED.
        return Candidates(sorted((name.replace("_", " "), weight) for name, weight in weights.items()))

    def synonyms(self, word: str, pos: str, lemma: str = "") -> Candidates:
        """Other lemmas of the first (most frequent) synset of ``word``, weighted by lemma counts."""
        key = (word.lower(), pos, lemma.lower())
        table = self._synonyms.get(key)
        if table is None:
            synsets = self.wordnet.synsets(key[0], pos)
            weighted: dict[str, int] = {}
            if synsets:
                for candidate in synsets[0].lemmas():
                    text = candidate.name().replace("_", " ")
                    if text.lower() not in (key[0], key[2]) and text not in weighted:
                        weighted[text] = max(self.lemma_count(candidate), 1)
            table = self._synonyms[key] = Candidates(list(weighted.items()))
        return table

    def prepositions(self, original: str) -> Candidates:
        """The fixed preposition list minus ``original`` (compared lower-cased)."""
        key = original.lower()
        table = self._prepositions.get(key)
        if table is None:
            table = self._prepositions[key] = Candidates([(p, w) for p, w in PREPOSITION_WEIGHTS if p != key])
        return table

    def is_phrasal_verb(self, verb_lemma: str, particle: str) -> bool:
        """Whether "verb particle" is a WordNet verb (e.g. "look at"); stands in for SceneGraphParser's list."""
        name = f"{verb_lemma.lower()}_{particle.lower()}"
        if name not in self._phrasal:
            self._phrasal[name] = bool(self.wordnet.synsets(name, "v"))
        return self._phrasal[name]


_DEFAULT: Lexicon | None = None


def default_lexicon() -> Lexicon:
    """The process-wide shared lexicon."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Lexicon()
    return _DEFAULT
