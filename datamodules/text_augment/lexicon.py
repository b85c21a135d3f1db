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
# NLTK's synset cache is cleared past this many synsets (~3 KB each: ~90 MB); tables are kept.
MAX_CACHED_SYNSETS = 30_000
# A hard-positive synonym is tagged at least this often, relative to the word, in the caption's sense:
# rarer lemmas are a change of register or of sense ("food" -> "nutrient", "court" -> "tribunal").
SYNONYM_MIN_RATIO = 0.1
# Penn tags lemminflect can inflect to (others are left as they are).
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

    def synonyms(self, word: str, pos: str, lemma: str = "", same_sense: bool = True) -> Candidates:
        """Other lemmas of the caption's sense of ``word`` (spaCy ``lemma``), weighted by lemma counts.

        The sense is WordNet's first ``pos`` synset of ``lemma`` (of ``word`` if WordNet lacks the
        lemma: "swinging" is "swing", not "swinge"). With ``same_sense`` (the hard-positive rule), only
        when that sense is the word's majority sense (more than half its tagged count over its ``pos``
        senses: not "plate", whose first sense is home plate), and only lemmas tagged in that sense at
        least ``SYNONYM_MIN_RATIO`` times as often as the word (and at least once; ``lemma.count()`` is
        the weight), whose own first ``pos`` sense it is ("fry" and "can" are lemmas of "child" and "toilet"
        whose first senses are others) and that are not tagged more often as another part of speech
        ("minor", "miss"). Without it: every other lemma of the synset, weighted
        ``max(count, 1)`` (the candidates the restriction refuses from).
        """
        key = (word.lower(), pos, lemma.lower(), same_sense)
        table = self._synonyms.get(key)
        if table is None:
            table = self._synonyms[key] = Candidates(self._synonyms_of(*key))
        return table

    def _synonyms_of(self, word: str, pos: str, lemma: str, same_sense: bool) -> list[tuple[str, int]]:
        wordnet = self.wordnet
        query = lemma if lemma and wordnet.synsets(lemma, pos) else word
        synsets = wordnet.synsets(query, pos)
        if not synsets:
            return []
        names = {word, lemma, query, wordnet.morphy(query, pos) or query}
        own = [sum(self.lemma_count(x) for x in s.lemmas() if x.name().lower() in names) for s in synsets]
        if same_sense and not 2 * own[0] > sum(own) > 0:
            return []
        weighted: dict[str, int] = {}
        for candidate in synsets[0].lemmas():
            text = candidate.name().replace("_", " ")
            if text.lower() in names or candidate.name().lower() in names or text in weighted:
                continue
            count = self.lemma_count(candidate)
            if not same_sense:
                weighted[text] = max(count, 1)
            elif (
                count >= SYNONYM_MIN_RATIO * own[0]
                and (wordnet.synsets(candidate.name(), pos) or [None])[0] == synsets[0]
            ):
                if self._count_as_other_pos(candidate.name(), pos) <= count:
                    weighted[text] = count
        return list(weighted.items())

    def _count_as_other_pos(self, name: str, pos: str) -> int:
        """The highest tagged count of ``name`` as a lemma of another part of speech."""
        others = [p for p in ("n", "v", "a", "r") if p != pos]  # "a" includes the satellites ("s")
        return max(
            (
                self.lemma_count(lemma)
                for p in others
                for synset in self.wordnet.synsets(name, p)
                for lemma in synset.lemmas()
                if lemma.name().lower() == name.lower()
            ),
            default=0,
        )

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
