"""Parse a caption once with spaCy and keep a light, picklable analysis of it.

``Analysis`` holds plain tuples (token texts, offsets, POS, tags, dependencies, lemmas, heads, noun
chunks, verb phrases), so it pickles, caches on disk and costs ~1-2 KB in memory. Generators derive
their candidate sets from it once and memoise them on the object (``Analysis.memo``).

``Analyzer`` = spaCy + an in-memory LRU keyed by caption + an optional sqlite cache on disk
(``diskcache.AnalysisDiskCache``). Use ``Analyzer.warm`` to parse a corpus in batches with ``nlp.pipe``.
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .diskcache import AnalysisDiskCache
from .resources import load_spacy

# NegCLIP / FSC-CLIP verb phrase: optional VERB, ADV*, AUX*, VERB+.
VERB_PHRASE_PATTERN = [
    {"POS": "VERB", "OP": "?"},
    {"POS": "ADV", "OP": "*"},
    {"POS": "AUX", "OP": "*"},
    {"POS": "VERB", "OP": "+"},
]
_FIELDS = ("text", "words", "idx", "pos", "tag", "dep", "lemma", "head", "noun_chunks", "verb_phrases")


def filter_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spacy.util.filter_spans`` on ``(start, end)`` pairs: longest first (earlier start on ties)."""
    chosen: list[tuple[int, int]] = []
    seen: set[int] = set()
    for start, end in sorted(spans, key=lambda s: (s[1] - s[0], -s[0]), reverse=True):
        if start not in seen and end - 1 not in seen:
            chosen.append((start, end))
            seen.update(range(start, end))
    return sorted(chosen)


class Analysis:
    """What the generators need to know about one caption (token-level arrays, all tuples)."""

    __slots__ = (*_FIELDS, "memo")

    def __init__(
        self,
        text: str,
        words: Sequence[str],
        idx: Sequence[int],
        pos: Sequence[str],
        tag: Sequence[str],
        dep: Sequence[str],
        lemma: Sequence[str],
        head: Sequence[int],
        noun_chunks: Sequence[tuple[int, int, int]],
        verb_phrases: Sequence[tuple[int, int]],
    ) -> None:
        intern = sys.intern
        self.text = text
        self.words = tuple(intern(w) for w in words)
        self.idx = tuple(idx)
        self.pos = tuple(intern(p) for p in pos)
        self.tag = tuple(intern(t) for t in tag)
        self.dep = tuple(intern(d) for d in dep)
        self.lemma = tuple(intern(lem) for lem in lemma)
        self.head = tuple(head)
        self.noun_chunks = tuple(tuple(chunk) for chunk in noun_chunks)  # (start, end, root)
        self.verb_phrases = tuple(tuple(vp) for vp in verb_phrases)  # (start, end), filter_spans'ed
        self.memo: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.words)

    def end(self, i: int) -> int:
        """Character offset just after token ``i``."""
        return self.idx[i] + len(self.words[i])

    def whitespace(self, i: int) -> str:
        """The whitespace after token ``i`` (spaCy's ``Token.whitespace_``: "" or " ")."""
        return self.text[self.end(i) : self.idx[i + 1] if i + 1 < len(self.words) else len(self.text)]

    def is_space(self, i: int) -> bool:
        """Whether token ``i`` is whitespace (spaCy makes one of extra spaces, tabs, newlines)."""
        return self.pos[i] == "SPACE" or self.words[i].isspace()

    def span_text(self, start: int, end: int) -> str:
        """Text of tokens ``start:end`` (like ``Span.text``: inner whitespace kept, trailing dropped)."""
        return self.text[self.idx[start] : self.end(end - 1)]

    def children(self, i: int) -> list[int]:
        return [j for j, h in enumerate(self.head) if h == i and j != i]

    def span_root(self, start: int, end: int) -> int:
        """``Span.root`` of spaCy: a sentence root inside the span, else the token closest to the root
        among those whose head lies outside the span."""
        for i in range(start, end):
            if self.head[i] == i:
                return i
        best, root = len(self.words) + 1, -1
        for i in range(start, end):
            if start <= self.head[i] < end:
                continue
            depth, j = 0, i
            while self.head[j] != j and depth <= len(self.words):
                j, depth = self.head[j], depth + 1
            if depth < best:
                best, root = depth, i
        return start if root < 0 else root

    def cached(self, key: str, build: Callable[[Analysis], Any]) -> Any:
        """``build(self)``, computed once per analysis object."""
        try:
            return self.memo[key]
        except KeyError:
            value = self.memo[key] = build(self)
            return value

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, name) for name in _FIELDS)

    @classmethod
    def from_tuple(cls, values: Sequence) -> Analysis:
        return cls(*values)

    def __reduce__(self) -> tuple:
        return (Analysis.from_tuple, (self.to_tuple(),))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Analysis) and self.to_tuple() == other.to_tuple()

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"Analysis({self.text!r}, {len(self.words)} tokens)"


def analysis_from_doc(doc: Any, matcher: Any) -> Analysis:
    """Convert a parsed spaCy ``Doc`` (verb phrases found with ``matcher``)."""
    from spacy.util import filter_spans as spacy_filter_spans

    tokens = list(doc)
    verb_phrases = spacy_filter_spans(matcher(doc, as_spans=True))
    return Analysis(
        doc.text,
        [t.text for t in tokens],
        [t.idx for t in tokens],
        [t.pos_ for t in tokens],
        [t.tag_ for t in tokens],
        [t.dep_ for t in tokens],
        [t.lemma_ for t in tokens],
        [t.head.i for t in tokens],
        [(c.start, c.end, c.root.i) for c in doc.noun_chunks],
        [(s.start, s.end) for s in verb_phrases],
    )


class _Pipeline:
    """spaCy pipeline + verb-phrase matcher, loaded once per process."""

    _instance: tuple[Any, Any] | None = None

    @classmethod
    def get(cls) -> tuple[Any, Any]:
        if cls._instance is None:
            from spacy.matcher import Matcher

            nlp = load_spacy()
            matcher = Matcher(nlp.vocab)
            matcher.add("VERB_PHRASE", [VERB_PHRASE_PATTERN])
            cls._instance = (nlp, matcher)
        return cls._instance


class Analyzer:
    """Caption -> ``Analysis`` with an LRU cache (``cache_size`` entries) and an optional disk cache.

    Picklable: spaCy, the in-memory cache and the database connection are per process and dropped
    on pickling; only the configuration travels.
    """

    def __init__(self, cache_size: int = 200_000, disk_cache: str | os.PathLike | None = None) -> None:
        self.cache_size = int(cache_size)
        self.disk_cache_path = None if disk_cache is None else os.fspath(disk_cache)
        self._reset()

    def _reset(self) -> None:
        self._cache: OrderedDict[str, Analysis] = OrderedDict()
        self._disk = None if self.disk_cache_path is None else AnalysisDiskCache(self.disk_cache_path)
        self.hits = self.misses = 0

    def __getstate__(self) -> dict:
        return {"cache_size": self.cache_size, "disk_cache_path": self.disk_cache_path}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        """Empty the in-memory cache (the disk cache is kept)."""
        self._cache.clear()

    def _remember(self, caption: str, analysis: Analysis) -> None:
        self._cache[caption] = analysis
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def get(self, caption: str) -> Analysis | None:
        """The cached analysis of ``caption`` (memory, then disk), or None."""
        analysis = self._cache.get(caption)
        if analysis is not None:
            self._cache.move_to_end(caption)
            return analysis
        if self._disk is not None:
            analysis = self._disk.get(caption)
            if analysis is not None:
                self._remember(caption, analysis)
        return analysis

    def __call__(self, caption: str) -> Analysis:
        """Analysis of one caption, parsed with spaCy on a cache miss."""
        analysis = self.get(caption)
        if analysis is not None:
            self.hits += 1
            return analysis
        self.misses += 1
        nlp, matcher = _Pipeline.get()
        analysis = analysis_from_doc(nlp(caption), matcher)
        self._remember(caption, analysis)
        if self._disk is not None:
            self._disk.put_many([(caption, analysis)])
        return analysis

    def warm(self, captions: Iterable[str], batch_size: int = 256) -> int:
        """Parse the captions not cached yet with ``nlp.pipe``; returns how many were parsed."""
        todo = list(dict.fromkeys(c for c in captions if self.get(c) is None))
        if not todo:
            return 0
        nlp, matcher = _Pipeline.get()
        for start in range(0, len(todo), 4096):
            chunk = todo[start : start + 4096]
            parsed = [analysis_from_doc(doc, matcher) for doc in nlp.pipe(chunk, batch_size=batch_size)]
            for caption, analysis in zip(chunk, parsed):
                self._remember(caption, analysis)
            if self._disk is not None:
                self._disk.put_many(zip(chunk, parsed))
        return len(todo)


_DEFAULT: Analyzer | None = None


def default_analyzer() -> Analyzer:
    """The process-wide shared analyzer (200k-entry LRU, no disk cache)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Analyzer()
    return _DEFAULT
