"""Exact compositional hard negatives for a caption, verified false against the scene."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import replace

from .description import Description, is_true
from .scene import Scene
from .vocabulary import COLORS, OPPOSITE_RELATION, SHAPES, SIZES

NEGATIVE_TYPES: tuple[str, ...] = (
    "swap_attribute",
    "swap_object",
    "replace_attribute",
    "replace_object",
    "replace_relation",
)

# Random replacement candidates drawn per negative type before giving up.
MAX_ATTEMPTS = 20

ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {"color": COLORS, "size": SIZES}


def _slots(caption: Description) -> list[str]:
    """The object slots a caption mentions."""
    return ["first"] if caption.second is None else ["first", "second"]


def _edit(caption: Description, slot: str, **changes: str) -> Description:
    """Copy of ``caption`` with attributes of one mentioned object changed."""
    return replace(caption, **{slot: replace(getattr(caption, slot), **changes)})


def _swap(caption: Description, attribute: str) -> Description:
    first, second = getattr(caption.first, attribute), getattr(caption.second, attribute)
    return _edit(_edit(caption, "first", **{attribute: second}), "second", **{attribute: first})


def _swap_attribute(caption: Description, rng: random.Random) -> Iterator[Description]:
    """Swap colours between the two objects; sizes if the colours are equal (or the colour swap is true)."""
    if caption.second is None:
        return
    for attribute in ("color", "size"):
        if getattr(caption.first, attribute) != getattr(caption.second, attribute):
            yield _swap(caption, attribute)


def _swap_object(caption: Description, rng: random.Random) -> Iterator[Description]:
    if caption.second is not None and caption.first.shape != caption.second.shape:
        yield _swap(caption, "shape")


def _replace_attribute(caption: Description, rng: random.Random) -> Iterator[Description]:
    for _ in range(MAX_ATTEMPTS):
        slot = rng.choice(_slots(caption))
        attribute = rng.choice(tuple(ATTRIBUTE_VALUES))
        current = getattr(getattr(caption, slot), attribute)
        value = rng.choice([v for v in ATTRIBUTE_VALUES[attribute] if v != current])
        yield _edit(caption, slot, **{attribute: value})


def _replace_object(caption: Description, rng: random.Random) -> Iterator[Description]:
    for _ in range(MAX_ATTEMPTS):
        slot = rng.choice(_slots(caption))
        current = getattr(caption, slot).shape
        yield _edit(caption, slot, shape=rng.choice([s for s in SHAPES if s != current]))


def _replace_relation(caption: Description, rng: random.Random) -> Iterator[Description]:
    if caption.relation is not None:
        yield replace(caption, relation=OPPOSITE_RELATION[caption.relation])


CANDIDATES: dict[str, Callable[[Description, random.Random], Iterator[Description]]] = {
    "swap_attribute": _swap_attribute,
    "swap_object": _swap_object,
    "replace_attribute": _replace_attribute,
    "replace_object": _replace_object,
    "replace_relation": _replace_relation,
}


def negative_descriptions(scene: Scene, caption: Description, rng: random.Random) -> dict[str, Description | None]:
    """For each of ``NEGATIVE_TYPES`` the first candidate that is false for the scene and reads
    differently from ``caption``, or None when no such candidate was found."""
    negatives: dict[str, Description | None] = {}
    for negative_type in NEGATIVE_TYPES:
        negatives[negative_type] = next(
            (
                candidate
                for candidate in CANDIDATES[negative_type](caption, rng)
                if candidate.text() != caption.text() and not is_true(scene, candidate)
            ),
            None,
        )
    return negatives
