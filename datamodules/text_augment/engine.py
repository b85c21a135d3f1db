"""``HardNegativeEngine``: run several caption generators with per-sample deterministic randomness."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence

from .analysis import Analyzer, default_analyzer
from .base import Generator, Normalize
from .lexicon import Lexicon
from .replace import Replace, SynonymReplace
from .shuffle import (
    BigramShuffle,
    ShuffleAllButNounsAndAdj,
    ShuffleNounsAndAdj,
    ShuffleTrigrams,
    ShuffleWithinTrigrams,
)
from .spatial import SpatialSwap
from .swap import ConjunctSwap, NegClipSwap

GENERATORS: dict[str, type[Generator]] = {
    cls.name: cls
    for cls in (
        NegClipSwap,
        Replace,
        BigramShuffle,
        ShuffleNounsAndAdj,
        ShuffleAllButNounsAndAdj,
        ShuffleWithinTrigrams,
        ShuffleTrigrams,
        SynonymReplace,
        ConjunctSwap,
        SpatialSwap,
    )
}
# FSC-CLIP's three training negatives, in its order.
TRAINING_GENERATORS: tuple[str, ...] = ("negclip", "replace", "bigram_shuffle")
ARO_ORDER_GENERATORS: tuple[str, ...] = (
    "shuffle_nouns_and_adj",
    "shuffle_allbut_nouns_and_adj",
    "shuffle_within_trigrams",
    "shuffle_trigrams",
)
HARD_POSITIVE_GENERATORS: tuple[str, ...] = ("synonym", "conjunct_swap")


def sample_seed(seed: int, epoch: int, index: int, name: str) -> int:
    """A 64-bit seed from BLAKE2b of (seed, epoch, index, generator name): stable across processes
    and Python runs (unlike ``hash()``), independent of worker count and call order."""
    key = f"vlzoo.text_augment|{int(seed)}|{int(epoch)}|{int(index)}|{name}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


class HardNegativeEngine:
    """Apply ``generators`` (names from ``GENERATORS``) to a caption; one output (or None) per generator.

    ``engine(caption, index, epoch)`` seeds each generator's ``random.Random`` from
    ``sample_seed(seed, epoch, index, name)``, so a sample gets the same outputs in any worker, in any
    order, after pickling, and different ones in another epoch. The caption is parsed once (shared
    ``analyzer``: by default the per-process ``default_analyzer()``, LRU of 200k captions). No output
    equals the caption after ``normalize`` (default ``clip_normalize``: CLIP's tokenizer cleaning;
    pass the text tower's own, a picklable function). Picklable for dataloader workers: spaCy and
    WordNet load lazily in each process.
    """

    def __init__(
        self,
        generators: Sequence[str],
        seed: int = 0,
        analyzer: Analyzer | None = None,
        lexicon: Lexicon | None = None,
        normalize: Normalize | None = None,
    ) -> None:
        if isinstance(generators, str):
            generators = [generators]
        unknown = [name for name in generators if name not in GENERATORS]
        if unknown:
            raise ValueError(f"Unknown text generator(s) {unknown}; known: {sorted(GENERATORS)}")
        self.names: tuple[str, ...] = tuple(generators)
        self.seed = int(seed)
        self._analyzer = analyzer
        self.generators: tuple[Generator, ...] = tuple(
            GENERATORS[name](analyzer, lexicon, normalize) for name in self.names
        )

    @property
    def analyzer(self) -> Analyzer:
        return self._analyzer if self._analyzer is not None else default_analyzer()

    def rng(self, name: str, index: int, epoch: int) -> random.Random:
        """The random stream generator ``name`` gets for sample ``index`` in ``epoch``."""
        return random.Random(sample_seed(self.seed, epoch, index, name))

    def __call__(self, caption: str, index: int, epoch: int = 0) -> list[str | None]:
        return [gen(caption, self.rng(gen.name, index, epoch)) for gen in self.generators]

    def warm(self, captions: Iterable[str], batch_size: int = 256, precompute: bool = True) -> int:
        """Parse not-yet-cached captions in batches with ``nlp.pipe``; returns how many were parsed.

        With ``precompute``, also run every generator once per caption (throwaway randomness) so the
        per-caption candidate sets and the WordNet tables are built too. Call it before the dataloader
        forks its workers and they inherit everything (within the analyzer's LRU size).
        """
        if not any(getattr(gen, "needs_analysis", True) for gen in self.generators):
            return 0  # word-table rules only (spatial_swap): nothing to parse or precompute
        captions = list(captions)
        parsed = self.analyzer.warm(captions, batch_size=batch_size)
        if precompute:
            rng = random.Random(0)
            counts = [gen.counts.copy() for gen in self.generators]
            for caption in captions:
                if self.analyzer.get(caption) is None:  # evicted from a too small LRU: do not re-parse
                    continue
                for gen in self.generators:
                    gen(caption, rng)
            for gen, kept in zip(self.generators, counts):  # throwaway calls are not counted
                gen.counts = kept
        return parsed

    def __repr__(self) -> str:
        return f"HardNegativeEngine(generators={list(self.names)}, seed={self.seed})"
