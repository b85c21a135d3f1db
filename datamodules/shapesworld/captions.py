"""Short captions (structured) and the detailed long caption of a scene."""

from __future__ import annotations

import random

from .description import Description, ObjectDescription
from .scene import Scene, SceneObject, relations_between
from .vocabulary import NUMBER_WORDS, OPPOSITE_RELATION, RELATION_PHRASES, position_name

MAX_CAPTIONS = 3


def caption_descriptions(scene: Scene, rng: random.Random) -> list[Description]:
    """1-3 distinct true captions; the first is the primary one.

    A single object is captioned by its full description. Otherwise each caption is a random true
    fact "A <relation> B"; a fact that merely restates an already chosen one from B's side is skipped.
    """
    objects = scene.objects
    if len(objects) == 1:
        return [Description(ObjectDescription.of(objects[0]))]
    facts = [(a, relation, b) for a in objects for b in objects if a is not b for relation in relations_between(a, b)]
    rng.shuffle(facts)
    chosen: list[tuple[SceneObject, str, SceneObject]] = []
    for a, relation, b in facts:
        if (b, OPPOSITE_RELATION[relation], a) in chosen:
            continue
        chosen.append((a, relation, b))
        if len(chosen) == MAX_CAPTIONS:
            break
    return [Description(ObjectDescription.of(a), relation, ObjectDescription.of(b)) for a, relation, b in chosen]


def object_name(obj: SceneObject) -> str:
    """Unambiguous short name "the red circle" ((colour, shape) is unique within a scene)."""
    return f"the {obj.color} {obj.shape}"


def long_caption(scene: Scene) -> str:
    """Object count, each object with attributes and position, and every pairwise relation."""
    count = len(scene.objects)
    noun = "object" if count == 1 else "objects"
    verb = "is" if count == 1 else "are"
    sentences = [f"There {verb} {NUMBER_WORDS[count]} {noun} in the image."]
    for obj in scene.objects:
        description = ObjectDescription.of(obj).text().capitalize()
        sentences.append(f"{description} is in the {position_name(obj.row, obj.col)}.")
    for i, a in enumerate(scene.objects):
        for b in scene.objects[i + 1 :]:
            phrases = " and ".join(RELATION_PHRASES[r] for r in relations_between(a, b))
            sentences.append(f"{object_name(a).capitalize()} is {phrases} {object_name(b)}.")
    return " ".join(sentences)
