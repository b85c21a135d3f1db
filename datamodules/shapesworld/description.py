"""Structured captions ("a small red circle to the left of a large blue square"), their text and truth."""

from __future__ import annotations

from dataclasses import dataclass

from .scene import Scene, SceneObject, relation_holds
from .vocabulary import COLORS, RELATION_PHRASES, SHAPES, SIZES


@dataclass(frozen=True)
class ObjectDescription:
    """A noun phrase; attributes left as None match anything."""

    size: str | None = None
    color: str | None = None
    shape: str | None = None

    @classmethod
    def of(cls, obj: SceneObject) -> ObjectDescription:
        """The full description (size, colour, shape) of a scene object."""
        return cls(obj.size, obj.color, obj.shape)

    def matches(self, obj: SceneObject) -> bool:
        return self.size in (None, obj.size) and self.color in (None, obj.color) and self.shape in (None, obj.shape)

    def text(self) -> str:
        words = [w for w in (self.size, self.color, self.shape or "object") if w is not None]
        article = "an" if words[0][0] in "aeiou" else "a"
        return " ".join([article, *words])


@dataclass(frozen=True)
class Description:
    """``first`` alone, or ``first <relation> second``."""

    first: ObjectDescription
    relation: str | None = None
    second: ObjectDescription | None = None

    def __post_init__(self) -> None:
        if (self.relation is None) != (self.second is None):
            raise ValueError("relation and second object must be given together")
        if self.relation is not None and self.relation not in RELATION_PHRASES:
            raise ValueError(f"unknown relation {self.relation!r}")

    def text(self) -> str:
        if self.relation is None:
            return self.first.text()
        return f"{self.first.text()} {RELATION_PHRASES[self.relation]} {self.second.text()}"


def is_true(scene: Scene, description: Description) -> bool:
    """True iff some object matches ``first`` and (if a relation is given) a different one matches
    ``second`` with the relation holding between them."""
    firsts = [o for o in scene.objects if description.first.matches(o)]
    if description.relation is None:
        return bool(firsts)
    seconds = [o for o in scene.objects if description.second.matches(o)]
    return any(a is not b and relation_holds(description.relation, a, b) for a in firsts for b in seconds)


def _parse_object(words: list[str]) -> ObjectDescription:
    if not words or words[0] not in ("a", "an"):
        raise ValueError(f"expected an article in {' '.join(words)!r}")
    words = words[1:]
    size = words.pop(0) if words and words[0] in SIZES else None
    color = words.pop(0) if words and words[0] in COLORS else None
    if words == ["object"]:
        return ObjectDescription(size, color, None)
    if len(words) != 1 or words[0] not in SHAPES:
        raise ValueError(f"expected a single shape noun, got {words}")
    return ObjectDescription(size, color, words[0])


def parse_description(text: str) -> Description:
    """Inverse of ``Description.text``: parse a caption back into its structured form."""
    padded = f" {text.strip()} "
    for relation, phrase in RELATION_PHRASES.items():
        head, sep, tail = padded.partition(f" {phrase} ")
        if sep:
            return Description(_parse_object(head.split()), relation, _parse_object(tail.split()))
    return Description(_parse_object(text.split()))
