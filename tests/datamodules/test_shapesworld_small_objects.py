"""ShapesWorld's ``small_objects`` layout (the split where resolution matters, for LLaVA-1.5-HD / AnyRes): seeded
wide-canvas scenes of 4-8 small shapes with distinct colours, not overlapping; every question's answer checked
with the scene truth functions; the records and question files in the grid layout's formats, read by
InstructionDataModule, its JSON source and VQAEvaluation; the grid layout unchanged (fixed digests)."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import Counter
from types import SimpleNamespace

import PIL
import pytest
import torch

from callbacks import VQAEvaluation
from datamodules.instruction import InstructionDataModule, QuestionRecords, ShapesWorldInstructions
from datamodules.shapesworld import generate_sample
from datamodules.shapesworld.description import Description, ObjectDescription, is_true, parse_description
from datamodules.shapesworld.generate import sample_metadata
from datamodules.shapesworld.instructions import (
    IMAGE_TOKEN,
    QA_TYPES,
    SHORT_ANSWER_SUFFIX,
    caption_record,
    image_name,
    instruction_record,
    main,
    scene_and_captions,
    scene_image,
    short_answer_pool,
    vqa_questions,
    write_instruction_data,
)
from datamodules.shapesworld.scene import relation_holds
from datamodules.shapesworld.small_objects import (
    SmallObject,
    SmallObjectsLayout,
    SmallObjectsScene,
    small_objects_long_caption,
)
from datamodules.shapesworld.vocabulary import COLOR_RGB, NUMBER_WORDS, RELATION_PHRASES, SHAPE_PLURALS, SHAPES
from tests.zoo.llava_fixtures import tiny_llava
from zoo.backbones.llava.conversation import check_conversation

LAYOUT = SmallObjectsLayout()  # 128 x 256, 4-8 objects, 5-8 % of the height across
N_SCENES = 150
SIDES = ("left", "middle", "right")
PHRASE_RELATIONS = {phrase: relation for relation, phrase in RELATION_PHRASES.items()}
SMALL = {"layout": "small_objects", "n_train": 8, "n_val": 4, "n_test": 4, "text_only_rate": 0.25}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scenes() -> list[SmallObjectsScene]:
    return [scene_and_captions(i, "train", 0, layout=LAYOUT)[0] for i in range(N_SCENES)]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The command's stage-2 output for the small-objects layout: 8 train and 4 val records, seed 0."""
    out = tmp_path_factory.mktemp("small-objects")
    main(["--out", str(out), "--stage", "finetune", "--n-train", "8", "--n-val", "4", "--layout", "small_objects"])
    return out


# ------------------------------------------------------------------------------------------ scenes
def test_scenes_are_a_function_of_seed_split_and_index(scenes):
    random.seed(3)
    for i in (17, 0, 99):
        again, captions = scene_and_captions(i, "train", 0, layout=LAYOUT)
        assert again == scenes[i] and again.to_dict() == scenes[i].to_dict()
        assert SmallObjectsScene.from_dict(json.loads(json.dumps(again.to_dict()))).to_dict() == again.to_dict()
        assert [c.text() for c in captions] == [c.text() for c in scene_and_captions(i, "train", 0, layout=LAYOUT)[1]]
    assert scene_image(5, "val", 1, layout=LAYOUT).tobytes() == scene_image(5, "val", 1, layout=LAYOUT).tobytes()
    other_seed = [scene_and_captions(i, "train", 1, layout=LAYOUT)[0] for i in range(20)]
    other_split = [scene_and_captions(i, "val", 0, layout=LAYOUT)[0] for i in range(20)]
    assert other_seed != scenes[:20] and other_split != scenes[:20]


def test_the_canvas_is_wide_and_images_keep_its_native_size():
    assert scene_image(0, "train", 0, layout=LAYOUT).size == (256, 128)  # PIL: (width, height), 1:2
    tall = SmallObjectsLayout(canvas=(96, 384), objects=(2, 3), object_size=(0.08, 0.1))
    image = scene_image(0, "train", 0, layout=tall)
    assert image.size == (384, 96) and image.mode == "RGB"
    assert ShapesWorldInstructions(**SMALL, canvas=[96, 384]).scene_layout().canvas == (96, 384)


def test_four_to_eight_small_objects_with_distinct_colours_apart_and_inside(scenes):
    counts = Counter(len(scene.objects) for scene in scenes)
    assert set(counts) == set(range(4, 9))  # 4..8, every count drawn
    for scene in scenes:
        assert scene.canvas == (128, 256)
        colors = [o.color for o in scene.objects]
        assert len(set(colors)) == len(colors)
        for o in scene.objects:
            x0, y0, x1, y1 = o.bbox
            assert 0 <= x0 and 0 <= y0 and x1 <= 256 and y1 <= 128
            assert 0.05 * 128 <= o.extent <= 0.08 * 128  # 6.4-10.24 px on the native canvas
            assert o.extent * 64 / 256 < 3  # ~2-3 px once the wide image is scaled into a 64 px square
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1 :]:
                gap = math.dist((a.x, a.y), (b.x, b.y)) - (a.extent + b.extent) / 2
                assert gap >= max(a.extent, b.extent), (a, b)  # apart by at least one object's width
    assert len({o.shape for scene in scenes for o in scene.objects}) == len(SHAPES)
    assert any(len({o.shape for o in s.objects}) < len(s.objects) for s in scenes)  # shapes may repeat


def test_each_object_is_drawn_in_its_colour_inside_its_box_and_nothing_else_is_drawn(scenes):
    for scene in scenes[:20]:
        image = scene_image(scenes.index(scene), "train", 0, layout=LAYOUT)
        pixels = image.load()
        inside = set()
        for o in scene.objects:
            x0, y0, x1, y1 = o.bbox
            box = [(x, y) for x in range(math.floor(x0), math.ceil(x1)) for y in range(math.floor(y0), math.ceil(y1))]
            inside.update(box)
            assert sum(pixels[p] == COLOR_RGB[o.color] for p in box) >= 4, o  # visible, in its own colour
        drawn = {(x, y) for x in range(256) for y in range(128) if pixels[x, y] != (0, 0, 0)}
        assert drawn and drawn <= inside


def test_a_scene_refuses_shared_colours_overlaps_and_objects_off_the_canvas():
    red = SmallObject("circle", "red", 0, 0, 10, 10, 8)
    with pytest.raises(ValueError, match="distinct"):
        SmallObjectsScene((red, SmallObject("square", "red", 0, 5, 100, 10, 8)))
    with pytest.raises(ValueError, match="overlap"):
        SmallObjectsScene((red, SmallObject("square", "blue", 0, 1, 15, 10, 8)))
    with pytest.raises(ValueError, match="leaves"):
        SmallObjectsScene((SmallObject("square", "blue", 0, 0, 2, 10, 8),))
    with pytest.raises(ValueError, match="holds only"):
        SmallObjectsLayout(canvas=(64, 16), objects=(4, 8))  # a 6 x 1 lattice
    with pytest.raises(ValueError, match="distinct colours"):
        SmallObjectsLayout(objects=(4, 9))
    with pytest.raises(ValueError, match="layout"):
        ShapesWorldInstructions(layout="tiles")


# ------------------------------------------------------------------------------------ QA truth
def _one(scene: SmallObjectsScene, description: ObjectDescription) -> SmallObject:
    """The single object ``description`` names (the question would be ambiguous otherwise)."""
    (obj,) = [o for o in scene.objects if description.matches(o)]
    return obj


def answer_from_scene(scene: SmallObjectsScene, question: str) -> str:
    """The answer to a generated question, from the scene through the truth functions."""
    question = question.removeprefix(IMAGE_TOKEN + "\n").removesuffix(SHORT_ANSWER_SUFFIX)
    if match := re.fullmatch(r"What color is the (\w+)\?", question):
        return _one(scene, ObjectDescription(shape=match[1])).color
    if match := re.fullmatch(r"What shape is the (\w+) object\?", question):
        return _one(scene, ObjectDescription(color=match[1])).shape
    if question == "How many objects are there?":
        return str(len(scene.objects))
    if match := re.fullmatch(r"How many (\w+) are there\?", question):
        shape = {plural: shape for shape, plural in SHAPE_PLURALS.items()}[match[1]]
        return str(sum(ObjectDescription(shape=shape).matches(o) for o in scene.objects))
    phrases = "|".join(PHRASE_RELATIONS)
    if match := re.fullmatch(rf"Is the (\w+) (\w+) ({phrases}) the (\w+) (\w+)\?", question):
        a = _one(scene, ObjectDescription(color=match[1], shape=match[2]))
        b = _one(scene, ObjectDescription(color=match[4], shape=match[5]))
        relation = PHRASE_RELATIONS[match[3]]
        assert relation_holds(relation, a, b) == is_true(
            scene, Description(ObjectDescription(color=a.color), relation, ObjectDescription(color=b.color))
        )
        return "yes" if relation_holds(relation, a, b) else "no"
    if match := re.fullmatch(r"Is there (an? \w+ \w+)\?", question):
        return "yes" if is_true(scene, parse_description(match[1])) else "no"
    if match := re.fullmatch(r"Which side of the image is the (\w+) (\w+) on\?", question):
        obj = _one(scene, ObjectDescription(color=match[1], shape=match[2]))
        x0, _, x1, _ = obj.bbox
        (third,) = {math.floor(3 * x / scene.width) for x in (x0, x1)}  # wholly inside one third
        return SIDES[third]
    raise AssertionError(f"unexpected question {question!r}")


def test_every_short_answer_is_true_of_the_scene_and_every_type_is_asked(scenes):
    answers: Counter = Counter()
    for i, scene in enumerate(scenes):
        pool = short_answer_pool(scene, random.Random(i))
        for qa_type, questions in pool.items():
            for qa in questions:
                assert qa["type"] == qa_type and answer_from_scene(scene, qa["question"]) == qa["answer"], qa
                answers[qa_type, qa["answer"] if qa_type in ("relation", "exists") else None] += 1
        # asked about every object they can be asked about unambiguously
        shapes = Counter(o.shape for o in scene.objects)
        assert len(pool["color"]) == sum(n == 1 for n in shapes.values()) and len(pool["shape"]) == len(scene.objects)
        in_a_third = [o for o in scene.objects if len({math.floor(3 * x / 256) for x in o.bbox[::2]}) == 1]
        assert len(pool["side"]) == len(in_a_third)
    for qa_type in ("relation", "exists"):
        assert answers[qa_type, "yes"] == answers[qa_type, "no"] == N_SCENES
    for qa_type in ("color", "shape", "count", "side"):
        assert answers[qa_type, None] >= N_SCENES


def test_the_records_and_vqa_questions_are_true_of_their_scenes(scenes):
    seen = Counter()
    for i, scene in enumerate(scenes[:60]):
        record = instruction_record(i, "train", 0, image_name("train", i), layout=LAYOUT)
        check_conversation(record["id"], record["conversations"], "image" in record)
        turns = record["conversations"]
        for human, gpt, qa_type in zip(turns[::2], turns[1::2], record["qa_types"]):
            seen[qa_type] += 1
            if qa_type in QA_TYPES:
                assert answer_from_scene(scene, human["value"]) == gpt["value"]
            elif qa_type is None:
                assert gpt["value"] == small_objects_long_caption(scene)
        caption = caption_record(i, "train", 0, "x.png", layout=LAYOUT)["conversations"][1]["value"]
        assert is_true(scene, parse_description(caption))
        for description in scene_and_captions(i, "train", 0, layout=LAYOUT)[1]:
            assert is_true(scene, description)
    assert set(seen) == {*QA_TYPES, "text", None}
    questions = vqa_questions(40, "val", 0, layout=LAYOUT)
    for i, q in enumerate(questions):
        scene = scene_and_captions(i, "val", 0, layout=LAYOUT)[0]
        assert answer_from_scene(scene, q["question"]) == q["answer"]
        assert (q["question_id"], q["image"]) == (f"val-{i:08d}", f"images/val/val-{i:08d}.png")
    assert questions[0].keys() == vqa_questions(1, "val", 0)[0].keys()  # the grid layout's format
    assert {q["type"] for q in questions} == set(QA_TYPES)


def test_the_long_caption_lists_the_objects_from_left_to_right(scenes):
    for scene in scenes[:40]:
        text = small_objects_long_caption(scene)
        assert text.startswith(f"There are {NUMBER_WORDS[len(scene.objects)]} small objects in the image. ")
        listed = re.search(r"From left to right: (.*?)\.", text)[1].replace(" and ", ", ").split(", ")
        objects = [_one(scene, parse_description(name).first) for name in listed]
        assert sorted(objects, key=lambda o: o.x) == sorted(scene.objects, key=lambda o: o.x)
        assert [o.x for o in objects] == sorted(o.x for o in objects)


# ------------------------------------------------------------------------------ files and readers
def test_the_command_writes_the_grid_formats_with_native_size_images(written):
    for split, n in (("train", 8), ("val", 4)):
        records = json.loads((written / f"{split}.json").read_text())
        assert [r["id"] for r in records] == [f"{split}-{i:08d}" for i in range(n)]
        assert records == [instruction_record(i, split, 0, image_name(split, i), layout=LAYOUT) for i in range(n)]
    questions = QuestionRecords(str(written / "val_questions.json"), None)
    assert json.loads((written / "val_questions.json").read_text()) == vqa_questions(4, "val", 0, layout=LAYOUT)
    for i in range(len(questions)):
        item = questions[i]
        assert item["images"].size == (256, 128)
        assert item["images"].convert("RGB").tobytes() == scene_image(i, "val", 0, layout=LAYOUT).tobytes()
        assert item["questions"].endswith(SHORT_ANSWER_SUFFIX)


def test_the_instruction_data_module_reads_the_layout_and_its_written_json_alike(tmp_path_factory, tmp_path):
    model = tiny_llava(tmp_path_factory, stage="finetune")
    config = ShapesWorldInstructions(**SMALL)
    records = InstructionDataModule(shapesworld=SMALL).shapesworld
    assert records.scene_layout() == LAYOUT and config == records
    write_instruction_data(tmp_path, 8, "train", "finetune", text_only_rate=0.25, layout=LAYOUT)

    def batches(**kwargs):
        dm = InstructionDataModule(batch_size=4, num_workers=0, **kwargs)
        dm.connect(**model.data_transforms())
        return dm, list(dm.train_dataloader())

    dm, generated = batches(shapesworld=SMALL)
    _, read = batches(source="json", train=str(tmp_path / "train.json"))
    assert not dm.skipped_invalid and sum(len(b["key"]) for b in generated) == 8
    for a, b in zip(generated, read, strict=True):
        assert a["key"] == b["key"] and a["pixel_values"].shape[-2:] == (42, 42)  # the processor's square
        for name in ("input_ids", "labels", "attention_mask"):
            assert torch.equal(a[name], b[name])
        torch.testing.assert_close(a["pixel_values"], b["pixel_values"])
    raw = dm.records("train").records
    assert next(raw[i]["image"] for i in range(8) if raw[i]["image"] is not None).size == (256, 128)


def test_vqa_evaluation_asks_the_data_modules_small_object_scenes():
    digest = {i: hashlib.md5(scene_image(i, "val", 0, layout=LAYOUT).tobytes()).hexdigest() for i in range(6)}
    questions = vqa_questions(6, "val", 0, layout=LAYOUT)
    plan = {(digest[i], q["question"]): q["answer"] for i, q in enumerate(questions)}
    sizes = []

    def generate(images, prompts, **kwargs):
        sizes.extend(image.size for image in images)
        return [plan.get((hashlib.md5(i.tobytes()).hexdigest(), p), "unknown") for i, p in zip(images, prompts)]

    model = SimpleNamespace(generate=generate)
    datamodule = SimpleNamespace(shapesworld=ShapesWorldInstructions(**SMALL))
    trainer = SimpleNamespace(datamodule=datamodule, is_global_zero=True, progress_bar_callback=None)
    result = VQAEvaluation(n=6, batch_size=4).evaluate(model, trainer)
    assert result["metrics"]["accuracy"] == 1.0 and result["settings"]["layout"] == LAYOUT
    assert [r["question"] for r in result["predictions"]] == [q["question"] for q in questions]
    assert set(sizes) == {(256, 128)}
    grid = VQAEvaluation(n=6).settings(
        SimpleNamespace(datamodule=SimpleNamespace(shapesworld=ShapesWorldInstructions()))
    )
    assert "layout" not in grid  # the grid layout's settings as before


# ------------------------------------------------------------------------------- grid unchanged
GRID_TEXT_SHA256 = "6ca4d04b038f2e629cdb28cfd951cd8c0c87c3d491c3f3a6af41f52dfbebec26"
GRID_PIXELS_SHA256 = "95fd280fa9e5cf82d71b44e5e37208f26410ed5435d8e7c9939524cc6cc5a681"  # Pillow 13.0.0


def test_the_grid_layout_is_unchanged_bit_for_bit():
    """Digests of the grid layout's samples, records and questions, taken before the small-objects layout was
    added (the pixels under the Pillow that rendered them)."""
    text, pixels = [], hashlib.sha256()
    for i in range(12):
        sample = generate_sample(i, "val", 0)
        pixels.update(sample["image"].tobytes())
        text.append(sample_metadata(sample))
        text.append(caption_record(i, "train", 0, image_name("train", i)))
        text.append(instruction_record(i, "train", 0, image_name("train", i)))
    text.append(vqa_questions(12, "val", 0))
    assert hashlib.sha256(json.dumps(text, sort_keys=True).encode()).hexdigest() == GRID_TEXT_SHA256
    if PIL.__version__ == "13.0.0":
        assert pixels.hexdigest() == GRID_PIXELS_SHA256
    assert ShapesWorldInstructions().scene_layout() is None  # the default layout is the grid
