"""Spatial swap: a hard negative that mirrors a caption's spatial relations ("left" <-> "right", "above" <-> "below").

The text-engine rule of "On erroneous agreements of CLIP image embeddings" (Li et al., 2024), used there to
fine-tune CLIP with left/right-swapped hard negatives. vlzoo's own table (no reference implementation):

=================  ==============  ====================================================================
phrase             swapped with    examples
=================  ==============  ====================================================================
``left``           ``right``       "on the left" / "to the left of" / "left of" / "left-hand" / "top left"
``leftmost``       ``rightmost``
``above``          ``below``
``on top of``      ``under``       What'sUp's on / under pairs
``in front of``    ``behind``      What'sUp's front / behind pairs
=================  ==============  ====================================================================

Every occurrence is swapped at once ("a cat left of a dog, right of a cup" -> "a cat right of a dog, left of a
cup"); matches are case-insensitive whole words (``\\b``: "leftover", "thunder", "abovementioned" stay), a
phrase's inner whitespace may be any run, and the replacement takes the matched text's casing ("Left" ->
"Right", "UNDER" -> "ON TOP OF", "Behind" -> "In front of"). "right" as an intensifier stays: directly before
"next", "now", "here", "there" or "away" and not after "the" ("right next to a dog" stays; "on the right next
to a dog" is swapped). A caption without a swappable word has no negative (None).

Left out on purpose: "over" / "under" ("over 10 people", "all over"), "top" / "bottom" ("a tank top", "the
bottom of a bottle"), "beneath" / "underneath" (their partner "on top of" already maps to "under"), and plain
"on" / "under" ("on" is everywhere). Known limit of a rule on words alone: "left" as a verb ("food left on a
plate") is swapped too.
"""

from __future__ import annotations

import random
import re

from .base import Generator
from .lexicon import match_case

SPATIAL_PAIRS: tuple[tuple[str, str], ...] = (
    ("left", "right"),
    ("leftmost", "rightmost"),
    ("above", "below"),
    ("on top of", "under"),
    ("in front of", "behind"),
)
SWAPS: dict[str, str] = {a: b for pair in SPATIAL_PAIRS for a, b in (pair, pair[::-1])}
INTENSIFIED: tuple[str, ...] = ("next", "now", "here", "there", "away")  # "right next to": not a side

_PHRASES = "|".join(r"\s+".join(map(re.escape, p.split())) for p in sorted(SWAPS, key=len, reverse=True))
_PATTERN = re.compile(rf"\b(?:{_PHRASES})\b", re.I)  # the longest phrase first
_INTENSIFIED = re.compile(rf"\s+(?:{'|'.join(INTENSIFIED)})\b", re.I)
_THE_BEFORE = re.compile(r"\bthe\s+$", re.I)


def _intensifier(text: str, match: re.Match[str]) -> bool:
    """Whether ``match`` is "right" used as an intensifier ("right next to"), not a side ("the right next to")."""
    if match.group().lower() != "right" or not _INTENSIFIED.match(text, match.end()):
        return False
    return _THE_BEFORE.search(text[: match.start()]) is None


def spatial_swap(caption: str) -> str | None:
    """``caption`` with every spatial word of :data:`SPATIAL_PAIRS` swapped at once, casing kept; None when it
    has none (see the module docstring for the table and its exceptions)."""
    swapped = False

    def replace(match: re.Match[str]) -> str:
        nonlocal swapped
        if _intensifier(caption, match):
            return match.group()
        swapped = True
        return match_case(SWAPS[" ".join(match.group().lower().split())], match.group())

    output = _PATTERN.sub(replace, caption)
    return output if swapped else None


class SpatialSwap(Generator):
    """Hard negative: :func:`spatial_swap` ("a red square to the left of a blue circle" -> "... to the right of
    ..."). Deterministic (the RNG is unused) and needs no parse: a table of words, not spaCy."""

    name = "spatial_swap"
    needs_analysis = False  # HardNegativeEngine.warm parses nothing for it

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        return self.differs(spatial_swap(caption), caption)
