"""Hard-negative captions for a training sample, from three kinds of source.

* rule-based generators of :mod:`datamodules.text_augment` (``negclip``, ``replace``,
  ``bigram_shuffle``, ...), run online and deterministic given (seed, epoch, sample index);
* ShapesWorld's exact negatives (``swap_attribute``, ``swap_object``, ``replace_attribute``,
  ``replace_object``, ``replace_relation``), defined for a scene's primary caption;
* ``precomputed``: one of the record's own negative captions (the NegCLIP TSV ``neg_caption`` list).
"""

from __future__ import annotations

import random
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
    """

    def __init__(self, generators: list[str], seed: int = 0) -> None:
        if len(set(generators)) != len(generators):
            raise ValueError(f"hard_negatives lists a generator twice: {generators}")
        self.generators = list(generators)
        self.seed = seed
        self.exact = [g for g in generators if g in NEGATIVE_TYPES]
        rule_based = [g for g in generators if g not in NEGATIVE_TYPES and g != PRECOMPUTED]
        self.engine = None
        if rule_based:
            from datamodules.text_augment import HardNegativeEngine  # spaCy / WordNet only when asked for

            self.engine = HardNegativeEngine(rule_based, seed=seed)
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
            choices = record["negative_captions"]
            rng = sample_rng(self.seed, epoch, index, PRECOMPUTED)
            outputs[PRECOMPUTED] = rng.choice(choices) if choices else None
        # a negative equal to its positive is no negative
        return [
            None if outputs[g] is None or outputs[g].strip() == caption.strip() else outputs[g] for g in self.generators
        ]
