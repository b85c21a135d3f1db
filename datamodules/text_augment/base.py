"""Common base of the caption generators: a ``name`` and ``__call__(caption, rng) -> str | None``."""

from __future__ import annotations

import random
from typing import ClassVar

from .analysis import Analysis, Analyzer, default_analyzer
from .lexicon import Lexicon, default_lexicon

# The number of extra draws a generator makes when a draw reproduces the input.
MAX_RETRIES = 10


class Generator:
    """A rule-based caption rewriter. ``None`` means "no valid output for this caption".

    Outputs never equal the input caption (compared after ``str.strip``; order perturbations compare
    their token sequences, see ``shuffle.py``). Analyses come from ``analyzer`` (default: the shared
    per-process ``default_analyzer()``); WordNet from ``lexicon`` (default: ``default_lexicon()``).
    Picklable; nothing heavy is loaded before the first call.
    """

    name: ClassVar[str] = ""

    def __init__(self, analyzer: Analyzer | None = None, lexicon: Lexicon | None = None) -> None:
        self._analyzer = analyzer
        self._lexicon = lexicon

    @property
    def analyzer(self) -> Analyzer:
        return self._analyzer if self._analyzer is not None else default_analyzer()

    @property
    def lexicon(self) -> Lexicon:
        return self._lexicon if self._lexicon is not None else default_lexicon()

    def analyze(self, caption: str) -> Analysis:
        return self.analyzer(caption)

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def differs(output: str | None, caption: str) -> str | None:
    """``output`` unless it is None or equals ``caption`` after stripping."""
    if output is None or output.strip() == caption.strip():
        return None
    return output


def swap_chars(text: str, first: tuple[int, int], second: tuple[int, int], first_new: str, second_new: str) -> str:
    """``text`` with char range ``first`` replaced by ``first_new`` and ``second`` (later) by ``second_new``."""
    return text[: first[0]] + first_new + text[first[1] : second[0]] + second_new + text[second[1] :]
