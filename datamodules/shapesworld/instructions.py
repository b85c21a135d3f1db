"""ShapesWorld as LLaVA instruction data: stage-1 caption records, stage-2 multi-turn records and a VQA set.

Records follow LLaVA's JSON format (``{"id", "image"?, "conversations": [{"from", "value"}, ...]}``) plus
``"qa_types"``: the question type of each gpt turn (None for free-form answers), so an evaluation can
report accuracy per type; LLaVA readers ignore unknown keys. Every record is a deterministic function of
(index, split, seed); its scene is the scene of ``generate_sample(index, split, seed)``.

Command: ``python -m datamodules.shapesworld.instructions --out DIR --stage pretrain|finetune`` writes
``DIR/<split>.json``, ``DIR/images/<split>/<key>.png`` and ``DIR/val_questions.json``.

``layout`` (a :class:`~.small_objects.SmallObjectsLayout`; ``None``: the 3x3 grid) switches every function here to
the small-objects scenes: 4-8 small shapes of distinct colours on a wide canvas, images at the canvas's native
size, the same record and question formats (``--layout small_objects``, ``--canvas H W`` on the command line).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from .captions import caption_descriptions, long_caption, object_name
from .description import Description
from .files import write_atomic
from .generate import sample_key
from .qa import question_answers
from .render import png_bytes, render_scene
from .scene import Scene, sample_scene, scene_rng
from .small_objects import (
    SmallObjectsLayout,
    SmallObjectsScene,
    render_small_objects,
    sample_small_objects_scene,
    small_objects_long_caption,
    small_objects_question_answers,
    small_objects_rng,
)
from .vocabulary import COLORS, SHAPE_PLURALS, SHAPES

IMAGE_TOKEN = "<image>"
SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."  # LLaVA-1.5's VQA prompt
CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe the image briefly.",
    "Give a short caption of the image.",
    "Summarize the image in a few words.",
    "Write a short description of the image.",
)
DETAIL_PROMPT = "Describe the image in detail."
DETAIL_RATE = 0.5  # share of stage-2 image records with a detailed description turn
SIDE_NAMES: tuple[str, ...] = ("left", "middle", "right")  # by grid column
# Short-answer question types of image records, in the order they are offered.
QA_TYPES: tuple[str, ...] = ("color", "shape", "count", "relation", "exists", "side")
TEXT_QA_TYPE = "text"
POLYGON_SIDES: dict[str, int] = {"triangle": 3, "square": 4, "diamond": 4, "pentagon": 5, "hexagon": 6}


def image_name(split: str, index: int) -> str:
    """Where the command writes scene ``index``'s image, relative to the JSON's folder."""
    return f"images/{split}/{sample_key(split, index)}.png"


def scene_and_captions(
    index: int,
    split: str,
    seed: int,
    image_size: int = 64,
    max_objects: int = 4,
    layout: SmallObjectsLayout | None = None,
) -> tuple[Scene | SmallObjectsScene, list[Description]]:
    """The scene of ``generate_sample(index, split, seed, image_size, max_objects)`` (with ``layout``: small-objects
    scene ``index``) and its short captions (the first is the primary one)."""
    scene, rng = _scene(index, split, seed, image_size, max_objects, layout)
    return scene, caption_descriptions(scene, rng)


def _scene(
    index: int, split: str, seed: int, image_size: int, max_objects: int, layout: SmallObjectsLayout | None
) -> tuple[Scene | SmallObjectsScene, random.Random]:
    """Scene ``index`` and its RNG, drawn as far as the scene (the captions draw from it next)."""
    if layout is not None:
        rng = small_objects_rng(index, split, seed)
        return sample_small_objects_scene(rng, layout), rng
    rng = scene_rng(index, split, seed)
    return sample_scene(rng, image_size, max_objects), rng


def scene_image(
    index: int,
    split: str,
    seed: int,
    image_size: int = 64,
    max_objects: int = 4,
    layout: SmallObjectsLayout | None = None,
) -> Image.Image:
    """The image of scene ``index`` (``generate_sample``'s; with ``layout``: at the canvas's native size)."""
    scene, _ = _scene(index, split, seed, image_size, max_objects, layout)  # no captions: the image only
    return render_small_objects(scene) if layout is not None else render_scene(scene)


def side_questions(scene: Scene | SmallObjectsScene) -> list[dict[str, str]]:
    """For every object, "Which side of the image is the red square on?"; answer left / middle / right (its column;
    in a small-objects scene the third of the width it lies in, and no question about one across a border)."""
    sides = [scene.side(o) for o in scene.objects] if isinstance(scene, SmallObjectsScene) else None
    return [
        {
            "question": f"Which side of the image is {object_name(obj)} on?",
            "answer": SIDE_NAMES[obj.col if sides is None else sides[i]],
            "type": "side",
        }
        for i, obj in enumerate(scene.objects)
        if sides is None or sides[i] is not None
    ]


def short_answer_pool(scene: Scene | SmallObjectsScene, rng: random.Random) -> dict[str, list[dict[str, str]]]:
    """All short-answer QA pairs of the scene (``question_answers`` + which side), grouped by type."""
    small = isinstance(scene, SmallObjectsScene)
    pool: dict[str, list[dict[str, str]]] = {qa_type: [] for qa_type in QA_TYPES}
    for qa in (small_objects_question_answers if small else question_answers)(scene, rng) + side_questions(scene):
        pool[qa["type"]].append(qa)
    return pool


def _pick_balanced(pool: dict[str, list[dict[str, str]]], n: int, rng: random.Random) -> list[dict[str, str]]:
    """``n`` distinct QA pairs: each draw picks a type with questions left, then one of its questions."""
    pool = {qa_type: list(questions) for qa_type, questions in pool.items()}
    picked = []
    for _ in range(n):
        types = [qa_type for qa_type in QA_TYPES if pool[qa_type]]
        questions = pool[rng.choice(types)]
        picked.append(questions.pop(rng.randrange(len(questions))))
    return picked


def _article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def text_questions() -> list[dict[str, str]]:
    """Questions answerable without an image, from the vocabulary (type ``"text"``)."""
    qa = [(f"What is the plural of {shape}?", SHAPE_PLURALS[shape]) for shape in SHAPES]
    for shape, sides in POLYGON_SIDES.items():
        qa.append((f"How many sides does {_article(shape)} have?", str(sides)))
        qa.append((f"Is {_article(shape)} a shape with {sides} sides?", "yes"))
        qa.append((f"Is {_article(shape)} a shape with {sides + 1} sides?", "no"))
    qa += [(f"Is {color} a color or a shape?", "color") for color in COLORS]
    qa += [(f"Is {shape} a color or a shape?", "shape") for shape in SHAPES]
    return [{"question": q, "answer": a, "type": TEXT_QA_TYPE} for q, a in qa]


def _conversation(turns: list[tuple[str, str, str | None]], has_image: bool) -> tuple[list[dict], list[str | None]]:
    """LLaVA ``conversations`` and ``qa_types`` of (question, answer, type) rounds; short-answer questions
    (type not None) get the suffix, the first human turn of an image record the ``<image>`` tag."""
    conversations, qa_types = [], []
    for question, answer, qa_type in turns:
        if qa_type is not None:
            question += SHORT_ANSWER_SUFFIX
        if has_image and not conversations:
            question = f"{IMAGE_TOKEN}\n{question}"
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        qa_types.append(qa_type)
    return conversations, qa_types


def _record(index: int, split: str, image: str | None, turns: list[tuple[str, str, str | None]]) -> dict[str, Any]:
    conversations, qa_types = _conversation(turns, has_image=image is not None)
    record: dict[str, Any] = {"id": sample_key(split, index)}
    if image is not None:
        record["image"] = image
    return {**record, "conversations": conversations, "qa_types": qa_types}


def _record_rng(kind: str, index: int, split: str, seed: int) -> random.Random:
    scene_rng(index, split, seed)  # validates split and index
    return random.Random(f"shapesworld-{kind}/{seed}/{split}/{index}")


def caption_record(
    index: int, split: str, seed: int, image_name: str, max_objects: int = 4, layout: SmallObjectsLayout | None = None
) -> dict[str, Any]:
    """Stage-1 (LLaVA pretraining) record: "<image>\\n" + a short instruction -> the scene's primary caption
    (``generate_sample(index, split, seed, max_objects=max_objects)["captions"][0]``)."""
    rng = _record_rng("caption", index, split, seed)
    _, captions = scene_and_captions(index, split, seed, max_objects=max_objects, layout=layout)
    return _record(index, split, image_name, [(rng.choice(CAPTION_PROMPTS), captions[0].text(), None)])


def instruction_record(
    index: int,
    split: str,
    seed: int,
    image_name: str,
    text_only_rate: float = 0.1,
    max_objects: int = 4,
    layout: SmallObjectsLayout | None = None,
) -> dict[str, Any]:
    """Stage-2 record: 2-4 rounds of short-answer questions (with LLaVA-1.5's suffix) and, in about half of
    the records, one detailed description turn. A ``text_only_rate`` share of indices (drawn first from the
    record's RNG, so other records do not change with the rate) is text-only: 1-3 vocabulary questions,
    no image, no tag."""
    if not 0.0 <= text_only_rate <= 1.0:
        raise ValueError(f"text_only_rate must be in [0, 1], got {text_only_rate}")
    rng = _record_rng("instruction", index, split, seed)
    if rng.random() < text_only_rate:
        chosen = rng.sample(text_questions(), rng.randint(1, 3))
        return _record(index, split, None, [(qa["question"], qa["answer"], qa["type"]) for qa in chosen])
    scene, _ = scene_and_captions(index, split, seed, max_objects=max_objects, layout=layout)
    rounds = rng.randint(2, 4)
    with_detail = rng.random() < DETAIL_RATE
    pool = short_answer_pool(scene, rng)
    turns: list[tuple[str, str, str | None]] = [
        (qa["question"], qa["answer"], qa["type"]) for qa in _pick_balanced(pool, rounds - with_detail, rng)
    ]
    if with_detail:
        detail = small_objects_long_caption(scene) if layout is not None else long_caption(scene)
        turns.insert(rng.randint(0, len(turns)), (DETAIL_PROMPT, detail, None))
    return _record(index, split, image_name, turns)


def vqa_questions(
    n: int, split: str = "val", seed: int = 0, max_objects: int = 4, layout: SmallObjectsLayout | None = None
) -> list[dict[str, str]]:
    """One short-answer question per scene 0..n-1: ``{"question_id", "image" (as the command names it),
    "question" (with the suffix), "answer", "type"}``; the type is drawn uniformly among those the scene has."""
    questions = []
    for index in range(n):
        rng = _record_rng("vqa", index, split, seed)
        scene, _ = scene_and_captions(index, split, seed, max_objects=max_objects, layout=layout)
        (qa,) = _pick_balanced(short_answer_pool(scene, rng), 1, rng)
        questions.append(
            {
                "question_id": sample_key(split, index),
                "image": image_name(split, index),
                "question": qa["question"] + SHORT_ANSWER_SUFFIX,
                "answer": qa["answer"],
                "type": qa["type"],
            }
        )
    return questions


def _write_image(
    out: Path, index: int, split: str, seed: int, image_size: int, max_objects: int, layout: SmallObjectsLayout | None
) -> None:
    """Render scene ``index`` to ``out / image_name(split, index)`` unless it is there already."""
    path = out / image_name(split, index)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, png_bytes(scene_image(index, split, seed, image_size, max_objects, layout)))


def write_instruction_data(
    out_dir: str | Path,
    n: int,
    split: str,
    stage: str,
    seed: int = 0,
    image_size: int = 64,
    text_only_rate: float = 0.1,
    max_objects: int = 4,
    layout: SmallObjectsLayout | None = None,
) -> Path:
    """Write ``out_dir/<split>.json`` (a LLaVA JSON list) and the images it names; return the JSON path."""
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"stage must be 'pretrain' or 'finetune', got {stage!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for index in tqdm(range(n), desc=f"shapesworld {split} {stage} records", unit="record", disable=None):
        name = image_name(split, index)
        if stage == "pretrain":
            record = caption_record(index, split, seed, name, max_objects, layout)
        else:
            record = instruction_record(index, split, seed, name, text_only_rate, max_objects, layout)
        if "image" in record:
            _write_image(out, index, split, seed, image_size, max_objects, layout)
        records.append(record)
    path = out / f"{split}.json"
    write_atomic(path, json.dumps(records, indent=1).encode("utf-8"))
    return path


def write_vqa_questions(
    out_dir: str | Path,
    n: int,
    split: str = "val",
    seed: int = 0,
    image_size: int = 64,
    max_objects: int = 4,
    layout: SmallObjectsLayout | None = None,
) -> Path:
    """Write ``out_dir/<split>_questions.json`` (``vqa_questions``) and any of its images not written yet."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    questions = vqa_questions(n, split, seed, max_objects, layout)
    for index in range(n):
        _write_image(out, index, split, seed, image_size, max_objects, layout)
    path = out / f"{split}_questions.json"
    write_atomic(path, json.dumps(questions, indent=1).encode("utf-8"))
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datamodules.shapesworld.instructions", description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stage", choices=("pretrain", "finetune"), required=True)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-val", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--max-objects", type=int, default=4)
    parser.add_argument("--text-only-rate", type=float, default=0.1, help="finetune stage: share of text-only records")
    default = SmallObjectsLayout()
    parser.add_argument(
        "--layout",
        choices=("grid", "small_objects"),
        default="grid",
        help="grid: 1-4 objects on a 3x3 grid (--image-size px square); small_objects: small shapes of distinct "
        "colours on a wide canvas, images at its native size (--image-size and --max-objects are not used)",
    )
    parser.add_argument("--canvas", type=int, nargs=2, default=default.canvas, metavar=("H", "W"))
    parser.add_argument("--object-count", type=int, nargs=2, default=default.objects, metavar=("MIN", "MAX"))
    parser.add_argument(
        "--object-size", type=float, nargs=2, default=default.object_size, metavar=("MIN", "MAX"),
        help="small_objects: object extent as a fraction of the canvas height",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    layout = None
    if args.layout == "small_objects":
        layout = SmallObjectsLayout(tuple(args.canvas), tuple(args.object_count), tuple(args.object_size))
    for split, n in (("train", args.n_train), ("val", args.n_val)):
        path = write_instruction_data(
            args.out, n, split, args.stage, args.seed, args.image_size, args.text_only_rate, args.max_objects, layout
        )
        print(f"wrote {path} ({n} records)")
    path = write_vqa_questions(args.out, args.n_val, "val", args.seed, args.image_size, args.max_objects, layout)
    print(f"wrote {path} ({args.n_val} questions)")


if __name__ == "__main__":
    main()
