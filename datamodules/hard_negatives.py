"""Hard-negative captions for a training sample, from three kinds of source.

* rule-based generators of :mod:`datamodules.text_augment` (``negclip``, ``replace``,
  ``bigram_shuffle``, ...), run online and deterministic given (seed, epoch, sample index);
* ShapesWorld's exact negatives (``swap_attribute``, ``swap_object``, ``replace_attribute``,
  ``replace_object``, ``replace_relation``), defined for a scene's primary caption;
* ``precomputed``: one of the record's own negative captions (the NegCLIP TSV ``neg_caption`` list).

Whatever the source, a negative equal to its positive after the text tower's normalisation (CLIP's
tokenizer lower-cases and collapses whitespace) is no negative: rule-based generators redraw, the
precomputed choice is made among the others, and what is left is None.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from datamodules.shapesworld import NEGATIVE_TYPES

PRECOMPUTED = "precomputed"


def sample_rng(seed: int, epoch: int, index: int | str, purpose: str) -> random.Random:
    """An RNG private to one sample, epoch and purpose: independent of workers and call order."""
    return random.Random(f"vlzoo/{seed}/{epoch}/{index}/{purpose}")


class NegativeCaptions:
    """One negative caption (or None) per requested generator for a caption.

    Args:
        generators: names, in the order the ``[B, K]`` negatives take them.
        seed: the seed of every generator's per-sample RNG.
        normalize: the text tower's normalisation (``str -> str``); a negative equal to the caption after
            it is dropped. Default (None): ``clip_normalize``, open_clip's ``SimpleTokenizer`` cleaning
            (ftfy, HTML unescaping, whitespace collapsed, lower case). Must be picklable (a module-level
            function) for dataloader workers.
    """

    def __init__(self, generators: list[str], seed: int = 0, normalize: Callable[[str], str] | None = None) -> None:
        if len(set(generators)) != len(generators):
            raise ValueError(f"hard_negatives lists a generator twice: {generators}")
        self.generators = list(generators)
        self.seed = seed
        if normalize is None:
            from datamodules.text_augment.base import clip_normalize

            normalize = clip_normalize
        self.normalize = normalize
        self.exact = [g for g in generators if g in NEGATIVE_TYPES]
        rule_based = [g for g in generators if g not in NEGATIVE_TYPES and g != PRECOMPUTED]
        self.engine = None
        if rule_based:
            from datamodules.text_augment import HardNegativeEngine  # spaCy / WordNet only when asked for

            self.engine = HardNegativeEngine(rule_based, seed=seed, normalize=normalize)
        self.rule_based = rule_based

    def warm(self, captions: list[str]) -> None:
        """Parse captions for the rule-based generators ahead of time (no-op without them)."""
        if self.engine is not None:
            self.engine.warm(sorted(set(captions)))

    @property
    def needs_primary_caption(self) -> bool:
        """ShapesWorld's exact negatives exist for the primary caption only."""
        return bool(self.exact)

    def __call__(self, record: dict[str, Any], caption: str, index: int, epoch: int) -> list[str | None]:
        outputs: dict[str, str | None] = {}
        if self.engine is not None:
            outputs.update(zip(self.rule_based, self.engine(caption, index, epoch)))
        for name in self.exact:
            if "negatives" not in record:
                raise ValueError(f"hard negative {name!r} is a ShapesWorld exact negative; this source has none")
            outputs[name] = record["negatives"][name]
        if PRECOMPUTED in self.generators:
            if "negative_captions" not in record:
                raise ValueError("hard negative 'precomputed' needs a source with negative captions (NegCLIP TSV)")
            positive = self.normalize(caption)
            choices = [c for c in record["negative_captions"] if self.normalize(c) != positive]
            rng = sample_rng(self.seed, epoch, index, PRECOMPUTED)
            outputs[PRECOMPUTED] = rng.choice(choices) if choices else None
        return [self._negative(outputs[g], caption) for g in self.generators]

    def _negative(self, negative: str | None, caption: str) -> str | None:
        """``negative`` unless it is None or equals ``caption`` after ``normalize`` (no negative then)."""
        if negative is None or self.normalize(negative) == self.normalize(caption):
            return None
        return negative
