"""Question-answer pairs about a scene (colour, shape, count, relation, existence)."""

from __future__ import annotations

import random

from .captions import object_name
from .description import ObjectDescription
from .scene import Scene, SceneObject, relations_between
from .vocabulary import COLORS, RELATION_PHRASES, RELATIONS, SHAPE_PLURALS, SHAPES, position_name


def _qa(question: str, answer: str, qa_type: str) -> dict[str, str]:
    return {"question": question, "answer": answer, "type": qa_type}


def _located(noun_phrase: str, obj: SceneObject, is_unique: bool) -> str:
    """``noun_phrase``, followed by the object's position when the phrase alone is ambiguous."""
    return noun_phrase if is_unique else f"{noun_phrase} in the {position_name(obj.row, obj.col)}"


def _attribute_questions(scene: Scene) -> list[dict[str, str]]:
    """For each object: its colour asked via its shape, and its shape asked via its colour."""
    shapes = [o.shape for o in scene.objects]
    colors = [o.color for o in scene.objects]
    qa = []
    for obj in scene.objects:
        by_shape = _located(f"the {obj.shape}", obj, shapes.count(obj.shape) == 1)
        qa.append(_qa(f"What color is {by_shape}?", obj.color, "color"))
    for obj in scene.objects:
        by_color = _located(f"the {obj.color} object", obj, colors.count(obj.color) == 1)
        qa.append(_qa(f"What shape is {by_color}?", obj.shape, "shape"))
    return qa


def _count_questions(scene: Scene, rng: random.Random) -> list[dict[str, str]]:
    shape = rng.choice(SHAPES)
    shape_count = sum(o.shape == shape for o in scene.objects)
    return [
        _qa("How many objects are there?", str(len(scene.objects)), "count"),
        _qa(f"How many {SHAPE_PLURALS[shape]} are there?", str(shape_count), "count"),
    ]


def _relation_questions(scene: Scene, rng: random.Random) -> list[dict[str, str]]:
    """One "yes" and one "no" relation question about random object pairs (needs two objects)."""
    if len(scene.objects) < 2:
        return []
    qa = []
    for answer in ("yes", "no"):
        a, b = rng.sample(scene.objects, 2)
        holding = relations_between(a, b)
        relation = rng.choice(holding if answer == "yes" else [r for r in RELATIONS if r not in holding])
        question = f"Is {object_name(a)} {RELATION_PHRASES[relation]} {object_name(b)}?"
        qa.append(_qa(question, answer, "relation"))
    return qa


def _exists_questions(scene: Scene, rng: random.Random) -> list[dict[str, str]]:
    """One "yes" question about a present (colour, shape) and one "no" about an absent one."""
    present = [(o.color, o.shape) for o in scene.objects]
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    qa = []
    for answer, pool in (("yes", present), ("no", absent)):
        color, shape = rng.choice(pool)
        qa.append(_qa(f"Is there {ObjectDescription(color=color, shape=shape).text()}?", answer, "exists"))
    return qa


def question_answers(scene: Scene, rng: random.Random) -> list[dict[str, str]]:
    """All QA pairs for the scene as dicts {"question", "answer", "type"}."""
    return (
        _attribute_questions(scene)
        + _count_questions(scene, rng)
        + _relation_questions(scene, rng)
        + _exists_questions(scene, rng)
    )
