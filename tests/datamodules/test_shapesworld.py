"""Tests of the ShapesWorld generator: determinism, truth of captions and negatives, QA, rendering, writers."""

from __future__ import annotations

import io
import json
import random
import re
from collections import Counter

import pytest
import webdataset as wds
from PIL import Image

from datamodules.shapesworld import (
    NEGATIVE_TYPES,
    SHAPES,
    ObjectDescription,
    Scene,
    SceneObject,
    ShapesWorld,
    caption_descriptions,
    generate_sample,
    is_true,
    long_caption,
    negative_descriptions,
    parse_description,
    png_bytes,
    question_answers,
    relation_holds,
    render_scene,
    write_compositional_benchmark,
    write_shards,
)
from datamodules.shapesworld.__main__ import main
from datamodules.shapesworld.vocabulary import COLOR_RGB, GRID_SIZE, RELATION_PHRASES, SHAPE_PLURALS, position_name

N_SCENES = 300
TEXT_KEYS = ("key", "captions", "long_caption", "negatives", "qa", "scene")
POSITIONS = {position_name(r, c): (r, c) for r in range(GRID_SIZE) for c in range(GRID_SIZE)}
PHRASE_RELATIONS = {phrase: relation for relation, phrase in RELATION_PHRASES.items()}


def texts(sample: dict) -> dict:
    return {name: sample[name] for name in TEXT_KEYS}


def hand_built_scene(image_size: int = 64) -> Scene:
    """Large red circle top left, small blue square top right, large red square bottom center."""
    return Scene(
        (
            SceneObject("square", "red", "large", row=2, col=1),
            SceneObject("circle", "red", "large", row=0, col=0),
            SceneObject("square", "blue", "small", row=0, col=2),
        ),
        image_size,
    )


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    return [generate_sample(i, split="val", seed=7) for i in range(N_SCENES)]


# ----------------------------------------------------------------------------- determinism
def test_same_arguments_give_identical_bytes_and_texts_in_any_order():
    indices = [3, 0, 41, 17]
    forward = {i: generate_sample(i, seed=5) for i in indices}
    random.seed(123)  # global RNG state must not matter
    for i in range(60):
        generate_sample(i, split="test", seed=9)
    for i in reversed(indices):
        again = generate_sample(i, seed=5)
        assert png_bytes(again["image"]) == png_bytes(forward[i]["image"])
        assert texts(again) == texts(forward[i])


def test_seeds_and_splits_are_different_streams():
    def stream(split: str, seed: int) -> list:
        samples = [generate_sample(i, split, seed) for i in range(20)]
        return [(png_bytes(s["image"]), s["captions"]) for s in samples]

    base = stream("train", 0)
    for other in (stream("train", 1), stream("val", 0), stream("test", 0)):
        assert sum(a != b for a, b in zip(base, other)) >= 18


def test_texts_do_not_depend_on_image_size():
    small, large = generate_sample(11, image_size=32), generate_sample(11, image_size=96)
    assert small["image"].size == (32, 32) and large["image"].size == (96, 96)
    assert small["image"].mode == "RGB"
    assert {k: small[k] for k in TEXT_KEYS if k != "scene"} == {k: large[k] for k in TEXT_KEYS if k != "scene"}


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError):
        generate_sample(0, split="training")
    with pytest.raises(ValueError):
        generate_sample(0, max_objects=0)
    with pytest.raises(ValueError):  # two objects in one cell
        Scene((SceneObject("circle", "red", "small", 0, 0), SceneObject("star", "blue", "small", 0, 0)))
    with pytest.raises(ValueError):  # (colour, shape) not unique
        Scene((SceneObject("circle", "red", "small", 0, 0), SceneObject("circle", "red", "large", 1, 1)))
    with pytest.raises(ValueError):  # jitter would leave the cell
        SceneObject("circle", "red", "large", 0, 0, offset=(0.1, 0.0))


# ------------------------------------------------------------------- structure and truth
def test_sample_structure_is_json_serialisable(samples):
    for index, sample in enumerate(samples):
        assert sample["key"] == f"val-{index:08d}"
        assert tuple(sample["negatives"]) == NEGATIVE_TYPES
        scene = sample["scene"]
        assert 1 <= len(scene["objects"]) <= 4
        assert {"shape", "color", "size", "row", "col", "bbox"} <= set(scene["objects"][0])
        assert json.loads(json.dumps(texts(sample))) == texts(sample)
        assert Scene.from_dict(scene).to_dict() == scene
    assert Counter(len(s["scene"]["objects"]) for s in samples).keys() == {1, 2, 3, 4}


def test_objects_stay_inside_their_cells(samples):
    for sample in samples:
        size = sample["scene"]["image_size"]
        cell = size / GRID_SIZE
        for obj in sample["scene"]["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            assert obj["col"] * cell < x0 < x1 < (obj["col"] + 1) * cell
            assert obj["row"] * cell < y0 < y1 < (obj["row"] + 1) * cell
            assert x1 - x0 == pytest.approx(size / (8 if obj["size"] == "small" else 4))


def test_captions_are_true_distinct_and_short(samples):
    for sample in samples:
        scene = Scene.from_dict(sample["scene"])
        captions = sample["captions"]
        assert 1 <= len(captions) <= 3 and len(set(captions)) == len(captions)
        for caption in captions:
            assert len(caption.split()) < 30
            description = parse_description(caption)
            assert description.text() == caption
            assert is_true(scene, description)
        if len(scene.objects) == 1:
            assert captions == [ObjectDescription.of(scene.objects[0]).text()]
        else:
            assert parse_description(captions[0]).relation is not None


def test_negatives_are_false_and_cover_every_type(samples):
    produced: Counter = Counter()
    multi_object = 0
    for sample in samples:
        scene = Scene.from_dict(sample["scene"])
        positive = parse_description(sample["captions"][0])
        multi_object += len(scene.objects) > 1
        for negative_type, negative in sample["negatives"].items():
            if negative is None:
                continue
            produced[negative_type] += len(scene.objects) > 1
            assert negative != sample["captions"][0]
            assert not is_true(scene, parse_description(negative)), (negative_type, negative, scene)
        if len(scene.objects) == 1:
            for negative_type in ("swap_attribute", "swap_object", "replace_relation"):
                assert sample["negatives"][negative_type] is None
        if positive.relation is not None:
            assert sample["negatives"]["replace_relation"] is not None
    for negative_type in NEGATIVE_TYPES:
        assert produced[negative_type] / multi_object > 0.75, (negative_type, produced)


def test_negative_kinds_edit_what_they_claim(samples):
    for sample in samples:
        positive = parse_description(sample["captions"][0])
        negatives = {k: parse_description(v) for k, v in sample["negatives"].items() if v is not None}
        if "swap_object" in negatives:
            swapped = negatives["swap_object"]
            assert (swapped.first.shape, swapped.second.shape) == (positive.second.shape, positive.first.shape)
            assert swapped.relation == positive.relation
        if "replace_relation" in negatives:
            assert negatives["replace_relation"].first == positive.first
            assert negatives["replace_relation"].relation != positive.relation
        if "replace_object" in negatives:
            changed = [
                a != b
                for a, b in (
                    (negatives["replace_object"].first, positive.first),
                    (negatives["replace_object"].second, positive.second),
                )
            ]
            assert sum(changed) == 1


def test_swap_attribute_needs_different_attributes():
    twins = Scene((SceneObject("circle", "red", "small", 0, 0), SceneObject("star", "red", "small", 0, 2)))
    caption = parse_description("a small red circle to the left of a small red star")
    negatives = negative_descriptions(twins, caption, random.Random(0))
    assert negatives["swap_attribute"] is None
    assert negatives["swap_object"].text() == "a small red star to the left of a small red circle"
    assert negatives["replace_relation"].text() == "a small red circle to the right of a small red star"


# ------------------------------------------------------------------------ hand-built scene
def test_relations_follow_grid_cells():
    top_left = SceneObject("circle", "red", "large", 0, 0)
    bottom_center = SceneObject("square", "red", "large", 2, 1)
    same_column = SceneObject("star", "blue", "small", 1, 0)
    relations = ("left_of", "right_of", "above", "below")
    assert [relation_holds(r, top_left, bottom_center) for r in relations] == [True, False, True, False]
    assert [relation_holds(r, bottom_center, top_left) for r in relations] == [False, True, False, True]
    assert [relation_holds(r, top_left, same_column) for r in relations] == [False, False, True, False]


def test_truth_checker_on_hand_built_scene():
    scene = hand_built_scene()
    truths = {
        "a large red circle": True,
        "a small red circle": False,
        "a red square": True,
        "a blue square": True,
        "a green square": False,
        "a large red circle to the left of a small blue square": True,
        "a small blue square to the left of a large red circle": False,
        "a large red circle above a large red square": True,
        "a large red square above a large red circle": False,
        "a red square below a blue square": True,
        "a red square to the right of a red circle": True,
        "a red square to the left of a red square": False,  # needs two different objects
        "a square to the right of a square": True,
        "a square to the left of a circle": False,
        "an object below a circle": True,
    }
    for text, expected in truths.items():
        assert is_true(scene, parse_description(text)) is expected, text


def test_hand_built_scene_captions_and_long_caption():
    scene = hand_built_scene()
    true_facts = {
        "a large red circle to the left of a small blue square",
        "a small blue square to the right of a large red circle",
        "a large red circle to the left of a large red square",
        "a large red circle above a large red square",
        "a large red square to the right of a large red circle",
        "a large red square below a large red circle",
        "a small blue square to the right of a large red square",
        "a small blue square above a large red square",
        "a large red square to the left of a small blue square",
        "a large red square below a small blue square",
    }
    for seed in range(20):
        captions = [c.text() for c in caption_descriptions(scene, random.Random(seed))]
        assert len(captions) == 3 and set(captions) <= true_facts
    assert long_caption(scene) == (
        "There are three objects in the image. A large red circle is in the top left. "
        "A small blue square is in the top right. A large red square is in the bottom center. "
        "The red circle is to the left of the blue square. "
        "The red circle is to the left of and above the red square. "
        "The blue square is to the right of and above the red square."
    )
    single = Scene((SceneObject("star", "orange", "small", 1, 1),))
    assert [c.text() for c in caption_descriptions(single, random.Random(0))] == ["a small orange star"]
    assert long_caption(single) == "There is one object in the image. A small orange star is in the center."


def test_hand_built_scene_qa():
    qa = question_answers(hand_built_scene(), random.Random(0))
    by_question = {q["question"]: (q["answer"], q["type"]) for q in qa}
    assert by_question["What color is the circle?"] == ("red", "color")
    assert by_question["What color is the square in the top right?"] == ("blue", "color")
    assert by_question["What color is the square in the bottom center?"] == ("red", "color")
    assert by_question["What shape is the blue object?"] == ("square", "shape")
    assert by_question["What shape is the red object in the top left?"] == ("circle", "shape")
    assert by_question["What shape is the red object in the bottom center?"] == ("square", "shape")
    assert by_question["How many objects are there?"] == ("3", "count")
    assert Counter(q["answer"] for q in qa if q["type"] == "relation") == {"yes": 1, "no": 1}
    assert Counter(q["answer"] for q in qa if q["type"] == "exists") == {"yes": 1, "no": 1}
    for q in qa:
        assert answer_from_scene(hand_built_scene(), q["question"]) == q["answer"]


# ------------------------------------------------------------------------------------- QA
def _find(scene: Scene, color: str | None, shape: str | None, position: str | None) -> list[SceneObject]:
    cell = POSITIONS[position] if position else None
    return [
        o
        for o in scene.objects
        if color in (None, o.color) and shape in (None, o.shape) and cell in (None, (o.row, o.col))
    ]


def answer_from_scene(scene: Scene, question: str) -> str:
    """Independent answer to a generated question, parsed with regular expressions."""
    position = r"(?: in the (?P<position>[a-z]+(?: [a-z]+)?))?"
    if match := re.fullmatch(rf"What color is the (?P<shape>\w+){position}\?", question):
        (obj,) = _find(scene, None, match["shape"], match["position"])
        return obj.color
    if match := re.fullmatch(rf"What shape is the (?P<color>\w+) object{position}\?", question):
        (obj,) = _find(scene, match["color"], None, match["position"])
        return obj.shape
    if question == "How many objects are there?":
        return str(len(scene.objects))
    if match := re.fullmatch(r"How many (\w+) are there\?", question):
        shape = {plural: shape for shape, plural in SHAPE_PLURALS.items()}[match[1]]
        return str(len(_find(scene, None, shape, None)))
    phrases = "|".join(PHRASE_RELATIONS)
    if match := re.fullmatch(rf"Is the (\w+) (\w+) ({phrases}) the (\w+) (\w+)\?", question):
        (a,) = _find(scene, match[1], match[2], None)
        (b,) = _find(scene, match[4], match[5], None)
        return "yes" if relation_holds(PHRASE_RELATIONS[match[3]], a, b) else "no"
    if match := re.fullmatch(r"Is there an? (\w+) (\w+)\?", question):
        return "yes" if _find(scene, match[1], match[2], None) else "no"
    raise AssertionError(f"unexpected question {question!r}")


def test_qa_answers_are_correct(samples):
    answers: Counter = Counter()
    for sample in samples:
        scene = Scene.from_dict(sample["scene"])
        for qa in sample["qa"]:
            assert set(qa) == {"question", "answer", "type"}
            assert answer_from_scene(scene, qa["question"]) == qa["answer"], qa
            answers[qa["type"], qa["answer"] if qa["type"] in ("relation", "exists") else None] += 1
    for qa_type in ("relation", "exists"):
        assert answers[qa_type, "yes"] > 50 and answers[qa_type, "no"] > 50
    for qa_type in ("color", "shape", "count"):
        assert answers[qa_type, None] >= N_SCENES


# -------------------------------------------------------------------------------- render
def test_pixel_at_object_centre_has_its_colour():
    scene = Scene((SceneObject("square", "red", "large", 1, 1), SceneObject("circle", "cyan", "large", 0, 2)), 64)
    image = render_scene(scene)
    assert image.getpixel((32, 32)) == COLOR_RGB["red"]
    assert image.getpixel((int(2.5 / 3 * 64), int(0.5 / 3 * 64))) == COLOR_RGB["cyan"]
    assert image.getpixel((0, 63)) == (0, 0, 0) and image.getpixel((32, 5)) == (0, 0, 0)


def test_every_shape_is_filled_at_its_centre():
    objects = tuple(
        SceneObject(shape, color, "large", k // GRID_SIZE, k % GRID_SIZE)
        for k, (shape, color) in enumerate(zip(SHAPES, COLOR_RGB))
    )
    image = render_scene(Scene(objects, 96))
    for obj in objects:
        x, y = obj.center
        assert image.getpixel((int(x * 96), int(y * 96))) == COLOR_RGB[obj.color], obj.shape


# ------------------------------------------------------------------------------- dataset
def test_dataset_matches_generate_sample():
    dataset = ShapesWorld(5, split="test", seed=2, image_size=32, max_objects=2)
    assert len(dataset) == 5
    item, expected = dataset[4], generate_sample(4, "test", 2, 32, 2)
    assert png_bytes(item["image"]) == png_bytes(expected["image"]) and texts(item) == texts(expected)
    assert all(len(dataset[i]["scene"]["objects"]) <= 2 for i in range(5))
    for bad in (5, -1):
        with pytest.raises(IndexError):
            dataset[bad]
    with pytest.raises(ValueError):
        ShapesWorld(5, split="dev")


# ------------------------------------------------------------------------------- writers
def test_write_shards_round_trip(tmp_path):
    shards = write_shards(tmp_path / "shards", n=25, split="val", seed=3, image_size=32, shard_size=10)
    assert [p.rsplit("/", 1)[1] for p in shards] == [f"shapesworld-val-{k:06d}.tar" for k in range(3)]
    records = list(wds.WebDataset(shards, shardshuffle=False))
    assert [r["__key__"] for r in records] == [f"val-{i:08d}" for i in range(25)]
    for index, record in enumerate(records):
        expected = generate_sample(index, "val", 3, 32)
        assert record["png"] == png_bytes(expected["image"])
        assert record["txt"].decode() == expected["captions"][0]
        meta = json.loads(record["json"])
        assert meta == {k: expected[k] for k in ("captions", "long_caption", "negatives", "qa", "scene")}
    again = write_shards(tmp_path / "again", n=25, split="val", seed=3, image_size=32, shard_size=10)
    assert [open(p, "rb").read() for p in again] == [open(p, "rb").read() for p in shards]


def test_compositional_benchmark(tmp_path):
    path = write_compositional_benchmark(tmp_path / "bench", n=30, seed=4, image_size=48)
    assert path == tmp_path / "bench" / "compositional.json"
    records = json.loads(path.read_text())
    expected_records = 0
    for index in range(30):
        sample = generate_sample(index, "test", 4, 48)
        available = {k: v for k, v in sample["negatives"].items() if v is not None}
        expected_records += len(available)
        mine = [r for r in records if r["id"].startswith(sample["key"] + "/")]
        assert [r["category"] for r in mine] == list(available)
        for record in mine:
            assert set(record) == {"id", "image", "positive", "negative", "category"}
            assert record["id"] == f"{sample['key']}/{record['category']}"
            assert record["image"] == f"images/{sample['key']}.png"
            assert record["positive"] == sample["captions"][0]
            assert record["negative"] == available[record["category"]]
            image_bytes = (path.parent / record["image"]).read_bytes()
            assert image_bytes == png_bytes(sample["image"])
            assert Image.open(io.BytesIO(image_bytes)).size == (48, 48)
    assert len(records) == expected_records and len({r["id"] for r in records}) == len(records)
    files_before = {p: p.read_bytes() for p in path.parent.rglob("*") if p.is_file()}
    write_compositional_benchmark(tmp_path / "bench", n=30, seed=4, image_size=48)
    assert {p: p.read_bytes() for p in path.parent.rglob("*") if p.is_file()} == files_before


def test_cli_show_and_benchmark(tmp_path, capsys):
    main(["show", "--n", "3", "--out", str(tmp_path / "grid.png"), "--image-size", "32"])
    assert Image.open(tmp_path / "grid.png").size == (3 * 32 + 2 * 2, 32)
    assert generate_sample(2)["captions"][0] in capsys.readouterr().out
    main(["benchmark", "--out", str(tmp_path / "bench"), "--n", "4"])
    assert json.loads((tmp_path / "bench" / "compositional.json").read_text())
