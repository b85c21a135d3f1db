"""Common base of the caption generators: a ``name`` and ``__call__(caption, rng) -> str | None``."""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import ClassVar

from .analysis import Analysis, Analyzer, default_analyzer
from .lexicon import Lexicon, default_lexicon

# The number of extra draws a generator makes when a draw reproduces the input.
MAX_RETRIES = 10

Normalize = Callable[[str], str]


# Printable ASCII and ordinary whitespace without "&": text ftfy and ``html.unescape`` leave as it is.
_PLAIN = re.compile(r"[\x20-\x25\x27-\x7e\t\n\r]*")


def clip_normalize(text: str) -> str:
    """The text cleaning of open_clip's ``SimpleTokenizer`` (its default ``clean="lower"``): ftfy, HTML
    unescaping and stripping (``basic_clean``), whitespace runs collapsed (``whitespace_clean``), lower case.

    Two captions equal after it are the same input to CLIP's text tower. ``basic_clean`` is skipped on
    plain text (printable ASCII, tabs and line breaks, no "&"), which it returns stripped: ftfy only
    changes non-ASCII text, control characters and HTML entities, and it costs ~20 µs a call.
    """
    from open_clip.tokenizer import basic_clean, whitespace_clean

    return whitespace_clean(text if _PLAIN.fullmatch(text) else basic_clean(text)).lower()


@functools.lru_cache(maxsize=4096)
def _normalized(normalize: Normalize, text: str) -> str:
    """``normalize(text)``, cached: a caption is compared with the outputs of every generator."""
    return normalize(text)


class Generator:
    """A rule-based caption rewriter. ``None`` means "no valid output for this caption".

    Outputs never equal the input caption after ``normalize`` (default ``clip_normalize``, the cleaning
    of CLIP's tokenizer: a case- or whitespace-only change is no change for the text tower); a draw that
    does is redrawn or given up (None). ``normalize`` must be picklable (a module-level function) for
    dataloader workers. Order perturbations also compare their token sequences, see ``shuffle.py``.
    Analyses come from ``analyzer`` (default: the shared per-process ``default_analyzer()``); WordNet
    from ``lexicon`` (default: ``default_lexicon()``). ``counts`` holds what a generator that refuses
    candidates records (``"attempts"``, ``"refused"``; see ``refused_share``). Picklable; nothing heavy
    is loaded before the first call.
    """

    name: ClassVar[str] = ""

    def __init__(
        self, analyzer: Analyzer | None = None, lexicon: Lexicon | None = None, normalize: Normalize | None = None
    ) -> None:
        self._analyzer = analyzer
        self._lexicon = lexicon
        self.normalize: Normalize = clip_normalize if normalize is None else normalize
        self.counts: Counter[str] = Counter()

    @property
    def analyzer(self) -> Analyzer:
        return self._analyzer if self._analyzer is not None else default_analyzer()

    @property
    def lexicon(self) -> Lexicon:
        return self._lexicon if self._lexicon is not None else default_lexicon()

    def analyze(self, caption: str) -> Analysis:
        return self.analyzer(caption)

    def differs(self, output: str | None, caption: str) -> str | None:
        """``output`` unless it is None or equals ``caption`` after ``normalize``."""
        if output is None or self.normalize(output) == _normalized(self.normalize, caption):
            return None
        return output

    def record(self, attempted: bool, refused: bool) -> None:
        """Count one call on a caption with candidates (``attempted``), all of them refused (``refused``)."""
        if attempted:
            self.counts["attempts"] += 1
            self.counts["refused"] += bool(refused)

    @property
    def refused_share(self) -> float:
        """Share of the calls with candidates where every candidate was refused (0 before any)."""
        return self.counts["refused"] / self.counts["attempts"] if self.counts["attempts"] else 0.0

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def swap_spans(a: Analysis, first: tuple[int, int], second: tuple[int, int], words: Sequence[str] | None = None) -> str:
    """``a.text`` with token spans ``first`` and ``second`` (``first`` before ``second``, disjoint) swapped.

    Rebuilt from tokens and their own trailing whitespace (spaCy's ``Token.whitespace_``): a moved span
    keeps its inner spacing and takes the whitespace of the slot it lands in, every other token (extra
    whitespace tokens included) stays in place, so no two words merge. ``words``: the texts of the
    spans' tokens if not ``a.words`` (e.g. re-cased).
    """
    (s1, e1), (s2, e2) = first, second
    words = a.words if words is None else words

    def run(start: int, end: int, tail: str) -> str:
        return "".join(words[i] + (a.whitespace(i) if i < end - 1 else tail) for i in range(start, end))

    middle = a.text[a.idx[e1] : a.idx[s2]] if e1 < s2 else ""
    rest = a.text[a.idx[e2] :] if e2 < len(a) else ""
    return a.text[: a.idx[s1]] + run(s2, e2, a.whitespace(e1 - 1)) + middle + run(s1, e1, a.whitespace(e2 - 1)) + rest
