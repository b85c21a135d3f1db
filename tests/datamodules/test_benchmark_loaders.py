"""Official-format benchmark loaders: SugarCrepe(++), ARO, What'sUp, Winoground, MMVP-VLM.

Every fixture is a few records written in the official file format, with tiny PNG images.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from datamodules.benchmarks.aro import (
    ARO_ORDER_PERTURBATIONS,
    ARO_SYMMETRIC_RELATIONS,
    load_coco_order,
    load_flickr30k_order,
    load_vg_attribution,
    load_vg_relation,
)
from datamodules.benchmarks.base import BenchmarkFormatError, ImageRef, Item
from datamodules.benchmarks.mmvp import load_mmvp
from datamodules.benchmarks.sugarcrepe import (
    SUGARCREPE_CATEGORIES,
    load_sugarcrepe,
    load_sugarcrepe_pp,
    sugarcrepe_averages,
)
from datamodules.benchmarks.whatsup import load_whatsup, load_whatsup_controlled, load_whatsup_qa
from datamodules.benchmarks.winoground import load_winoground


def png(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 30, 30)).save(path, format="PNG")
    return str(path.resolve())


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# ----------------------------------------------------------------------------------------- SugarCrepe


@pytest.fixture
def sugarcrepe(tmp_path):
    images = tmp_path / "val2017"
    paths = {name: png(images / name) for name in ("000000000001.jpg", "000000000002.jpg")}
    data = tmp_path / "data"
    for category in SUGARCREPE_CATEGORIES:
        write_json(
            data / f"{category}.json",
            {
                "0": {
                    "filename": "000000000001.jpg",
                    "caption": f"{category} positive",
                    "negative_caption": f"{category} negative",
                }
            },
        )
    write_json(
        data / "swap_obj.json",
        {
            "5": {"filename": "000000000002.jpg", "caption": "A cat on a mat.", "negative_caption": "A mat on a cat."},
            "9": {
                "filename": "000000000001.jpg",
                "caption": "A dog chasing a man.",
                "negative_caption": "A man chasing a dog.",
            },
        },
    )
    return data, images, paths


def test_sugarcrepe_directory_gives_all_seven_categories(sugarcrepe):
    data, images, paths = sugarcrepe
    benchmarks = load_sugarcrepe(data, images)
    assert [b.name for b in benchmarks] == [
        "sugarcrepe/add_att",
        "sugarcrepe/add_obj",
        "sugarcrepe/replace_att",
        "sugarcrepe/replace_obj",
        "sugarcrepe/replace_rel",
        "sugarcrepe/swap_att",
        "sugarcrepe/swap_obj",
    ]
    assert {b.protocol for b in benchmarks} == {"multiple_choice"}
    assert benchmarks[0].items == [
        Item("0", [ImageRef(paths["000000000001.jpg"])], ["add_att positive", "add_att negative"], "", {"answer": 0})
    ]
    swap_obj = benchmarks[-1]
    assert swap_obj.source == str(data / "swap_obj.json") and swap_obj.skipped == 0
    assert swap_obj.items == [
        Item("5", [ImageRef(paths["000000000002.jpg"])], ["A cat on a mat.", "A mat on a cat."], "", {"answer": 0}),
        Item(
            "9",
            [ImageRef(paths["000000000001.jpg"])],
            ["A dog chasing a man.", "A man chasing a dog."],
            "",
            {"answer": 0},
        ),
    ]


def test_sugarcrepe_files_are_ordered_by_category_and_a_missing_one_is_named(sugarcrepe):
    data, images, _ = sugarcrepe
    benchmarks = load_sugarcrepe([data / "swap_att.json", data / "add_obj.json"], images)
    assert [b.name for b in benchmarks] == ["sugarcrepe/add_obj", "sugarcrepe/swap_att"]
    with pytest.raises(BenchmarkFormatError, match="not a SugarCrepe category"):
        load_sugarcrepe([write_json(data.parent / "other.json", {})], images)
    (data / "replace_rel.json").unlink()
    with pytest.raises(BenchmarkFormatError, match="replace_rel.json"):
        load_sugarcrepe(data, images)


def test_sugarcrepe_missing_image_and_malformed_record(sugarcrepe):
    data, images, _ = sugarcrepe
    (images / "000000000002.jpg").unlink()
    with pytest.raises(BenchmarkFormatError, match=r"swap_obj\.json, record 5: image .*000000000002\.jpg"):
        load_sugarcrepe([data / "swap_obj.json"], images)
    [swap_obj] = load_sugarcrepe([data / "swap_obj.json"], images, skip_missing=True)
    assert swap_obj.skipped == 1 and [item.id for item in swap_obj.items] == ["9"]

    write_json(data / "add_att.json", {"3": {"filename": "000000000001.jpg", "caption": "A dog."}})
    with pytest.raises(BenchmarkFormatError, match=r"add_att\.json, record 3: missing or empty 'negative_caption'"):
        load_sugarcrepe([data / "add_att.json"], images)
    [add_att] = load_sugarcrepe([data / "add_att.json"], images, skip_missing=True)
    assert add_att.items == [] and add_att.skipped == 1


def test_sugarcrepe_family_averages():
    accuracies = {
        "sugarcrepe/add_att": 0.8,
        "add_obj": 0.6,
        "replace_obj": 0.9,
        "replace_att": 0.6,
        "replace_rel": 0.3,
        "swap_obj": 0.5,
        "swap_att": 0.7,
    }
    assert sugarcrepe_averages(accuracies) == pytest.approx({"replace": 0.6, "swap": 0.6, "add": 0.7})
    del accuracies["swap_att"]
    assert set(sugarcrepe_averages(accuracies)) == {"replace", "add"}


def test_sugarcrepe_pp_official_list_format(tmp_path):
    images = tmp_path / "images"
    image = png(images / "000000331352.jpg")
    data = tmp_path / "data"
    write_json(
        data / "swap_obj.json",
        [
            {
                "id": 0,
                "filename": "000000331352.jpg",
                "caption": "A cat sits on the plant.",
                "caption2": "The plant has a cat sitting on it.",
                "negative_caption": "A plant sits on the cat.",
            },
            {"id": 7, "filename": "000000331352.jpg", "caption": "P1", "caption2": "P2", "negative_caption": "P1"},
        ],
    )
    write_json(
        data / "replace_att.json",
        [{"id": 3, "filename": "missing.jpg", "caption": "a", "caption2": "b", "negative_caption": "c"}],
    )
    with pytest.raises(BenchmarkFormatError, match=r"replace_att\.json, record 3: image"):
        load_sugarcrepe_pp([data / "swap_obj.json", data / "replace_att.json"], images)
    replace_att, swap_obj = load_sugarcrepe_pp(
        [data / "swap_obj.json", data / "replace_att.json"], images, skip_missing=True
    )
    assert (replace_att.name, replace_att.items, replace_att.skipped) == ("sugarcrepe_pp/replace_att", [], 1)
    assert swap_obj.name == "sugarcrepe_pp/swap_obj" and swap_obj.protocol == "sugarcrepe_pp"
    assert swap_obj.items == [
        Item(
            "0",
            [ImageRef(image)],
            ["A cat sits on the plant.", "The plant has a cat sitting on it.", "A plant sits on the cat."],
            "",
            {},
        ),
        Item("7", [ImageRef(image)], ["P1", "P2", "P1"], "", {}),
    ]
    with pytest.raises(BenchmarkFormatError, match="swap_att.json"):  # a directory must hold all five
        load_sugarcrepe_pp(data, images)


# ------------------------------------------------------------------------------------------------ ARO


def vg_record(**fields):
    record = {
        "image_path": "2350517.jpg",
        "bbox_x": 10,
        "bbox_y": 20,
        "bbox_w": 30.5,
        "bbox_h": 40,
        "true_caption": "the man is wearing the shirt",
        "false_caption": "the shirt is wearing the man",
    }
    record.update(fields)
    return record


def test_vg_relation(tmp_path):
    image = png(tmp_path / "images" / "2350517.jpg")
    path = write_json(
        tmp_path / "visual_genome_relation.json",
        [
            vg_record(relation_name="wearing"),
            vg_record(
                relation_name="next to",
                bbox_x=0,
                true_caption="the cup is next to the plate",
                false_caption="the plate is next to the cup",
            ),
        ],
    )
    benchmark = load_vg_relation(path, tmp_path / "images")
    assert (benchmark.name, benchmark.protocol, benchmark.skipped) == ("aro/vg_relation", "multiple_choice", 0)
    assert benchmark.items == [
        Item(
            "0",
            [ImageRef(image, (10.0, 20.0, 30.5, 40.0))],
            ["the shirt is wearing the man", "the man is wearing the shirt"],
            "wearing",
            {"answer": 1, "symmetric": False},
        ),
        Item(
            "1",
            [ImageRef(image, (0.0, 20.0, 30.5, 40.0))],
            ["the plate is next to the cup", "the cup is next to the plate"],
            "next to",
            {"answer": 1, "symmetric": True},
        ),
    ]
    assert benchmark.options == {
        "macro_over_groups": True,
        "macro_min_items": 1,
        "macro_exclude_groups": list(ARO_SYMMETRIC_RELATIONS),
    }
    assert len(ARO_SYMMETRIC_RELATIONS) == len(set(ARO_SYMMETRIC_RELATIONS)) == 157
    assert "wearing" not in ARO_SYMMETRIC_RELATIONS and "on the side of" in ARO_SYMMETRIC_RELATIONS


def test_vg_attribution_and_bad_records(tmp_path):
    image = png(tmp_path / "images" / "2350517.jpg")
    path = write_json(
        tmp_path / "visual_genome_attribution.json",
        [
            vg_record(
                attributes=["white", "black"],
                true_caption="the white cat and the black dog",
                false_caption="the black cat and the white dog",
            ),
            vg_record(attributes=["red", "blue"], bbox_w=None),
            vg_record(attributes=["red", "blue"], image_path="missing.jpg"),
        ],
    )
    with pytest.raises(BenchmarkFormatError, match=r"visual_genome_attribution\.json, record 1: .*'bbox_w'"):
        load_vg_attribution(path, tmp_path / "images")
    benchmark = load_vg_attribution(path, tmp_path / "images", skip_missing=True)
    assert (benchmark.name, benchmark.skipped) == ("aro/vg_attribution", 2)
    assert benchmark.items == [
        Item(
            "0",
            [ImageRef(image, (10.0, 20.0, 30.5, 40.0))],
            ["the black cat and the white dog", "the white cat and the black dog"],
            "white_black",
            {"answer": 1},
        )
    ]
    assert benchmark.options == {"macro_over_groups": True, "macro_min_items": 25}
    write_json(path, [vg_record(attributes=["red", "blue"], image_path="missing.jpg")])
    with pytest.raises(BenchmarkFormatError, match=r"record 0: image .*missing\.jpg"):
        load_vg_attribution(path, tmp_path / "images")


class StubEngine:
    """Stands in for ``HardNegativeEngine``: records its calls, answers from ``outputs[index]``."""

    def __init__(self, outputs):
        self.outputs, self.calls, self.warmed = outputs, [], None

    def warm(self, captions):
        self.warmed = list(captions)

    def __call__(self, caption, index, epoch=0):
        self.calls.append((caption, index, epoch))
        return self.outputs[index]


WORDS = " ".join(f"w{i}" for i in range(1, 36))


def test_coco_order_from_aro_annotation_file(tmp_path):
    first = png(tmp_path / "coco" / "val2014" / "COCO_val2014_000000000001.jpg")
    second = png(tmp_path / "coco" / "val2014" / "COCO_val2014_000000000002.jpg")
    path = write_json(
        tmp_path / "coco" / "coco_karpathy_test.json",
        [
            {"image": "val2014/COCO_val2014_000000000001.jpg", "caption": ["A Dog: on the (grass)!", "Two cats."]},
            {"image": "val2014/COCO_val2014_000000000002.jpg", "caption": [WORDS]},
        ],
    )
    engine = StubEngine(
        {
            0: ["Grass the on dog A", None, "A dog on the grass .", "on the grass A Dog"],
            1: ["cats Two .", ". Two cats", None, "Two . cats"],
            2: [WORDS.replace("w33", "w34"), WORDS.replace("w1 ", "w2 ", 1), None, None],
        }
    )
    benchmark = load_coco_order(path, tmp_path / "coco", engine=engine)
    assert engine.calls == [("A Dog: on the (grass)!", 0, 0), ("Two cats.", 1, 0), (WORDS, 2, 0)]
    assert engine.warmed == ["A Dog: on the (grass)!", "Two cats.", WORDS]
    cut = " ".join(WORDS.split()[:30])
    assert benchmark.items == [
        Item(
            "0_0",
            [ImageRef(first)],
            [
                "a dog on the grass",
                "grass the on dog a",
                "a dog on the grass",
                "a dog on the grass",
                "on the grass a dog",
            ],
            "",
            {"answer": 0, "unchanged": [2, 3]},
        ),
        Item(
            "0_1",
            [ImageRef(first)],
            ["two cats", "cats two", "two cats", "two cats", "two cats"],
            "",
            {"answer": 0, "unchanged": [2, 3, 4]},
        ),
        Item(
            "1_0",
            [ImageRef(second)],
            [cut, cut, cut.replace("w1 ", "w2 ", 1), cut, cut],
            "",
            {"answer": 0, "unchanged": [1, 3, 4]},
        ),
    ]
    assert (benchmark.name, benchmark.protocol, benchmark.skipped) == ("aro/coco_order", "multiple_choice", 0)
    assert benchmark.options == {
        "tie_rule": "strict",
        "perturbations": list(ARO_ORDER_PERTURBATIONS),
        "seed": 0,
        "max_words": 30,
        "tied_items": 3,
    }
    ties = load_coco_order(path, tmp_path / "coco", reference_ties=True, engine=StubEngine(engine.outputs))
    assert ties.options["tie_rule"] == "first_max" and ties.items == benchmark.items


def test_flickr30k_order_from_karpathy_file_and_missing_images(tmp_path):
    image = png(tmp_path / "flickr30k-images" / "1000.jpg")
    path = write_json(
        tmp_path / "dataset_flickr30k.json",
        {
            "images": [
                {"filename": "1000.jpg", "split": "test", "sentences": [{"raw": "A man rides a horse."}]},
                {"filename": "2000.jpg", "split": "train", "sentences": [{"raw": "Not a test caption."}]},
                {"filename": "3000.jpg", "split": "test", "sentences": [{"raw": "First."}, {"raw": "Second."}]},
            ]
        },
    )
    engine = StubEngine({0: ["horse a rides man A", None, None, None]})
    with pytest.raises(BenchmarkFormatError, match=r"dataset_flickr30k\.json, record 1_0: image .*3000\.jpg"):
        load_flickr30k_order(path, tmp_path / "flickr30k-images", engine=engine)
    engine = StubEngine({0: ["horse a rides man A", None, None, None]})
    benchmark = load_flickr30k_order(path, tmp_path / "flickr30k-images", skip_missing=True, engine=engine)
    assert (benchmark.name, benchmark.skipped) == ("aro/flickr30k_order", 2)
    assert benchmark.items == [
        Item(
            "0_0",
            [ImageRef(image)],
            [
                "a man rides a horse",
                "horse a rides man a",
                "a man rides a horse",
                "a man rides a horse",
                "a man rides a horse",
            ],
            "",
            {"answer": 0, "unchanged": [2, 3, 4]},
        )
    ]
    assert engine.calls == [("A man rides a horse.", 0, 0)]


def test_order_builds_the_aro_engine_with_the_seed(tmp_path, monkeypatch):
    import datamodules.text_augment as text_augment

    made = []

    class Recorder(StubEngine):
        def __init__(self, generators, seed=0):
            made.append((list(generators), seed))
            super().__init__({0: ["b a", "b a", "b a", "b a"]})

    monkeypatch.setattr(text_augment, "HardNegativeEngine", Recorder)
    png(tmp_path / "val2014" / "x.jpg")
    path = write_json(tmp_path / "coco_karpathy_test.json", [{"image": "val2014/x.jpg", "caption": ["a b"]}])
    benchmark = load_coco_order(path, tmp_path, seed=7)
    assert made == [(list(text_augment.ARO_ORDER_GENERATORS), 7)]
    assert benchmark.options["seed"] == 7 and benchmark.items[0].texts == ["a b", "b a", "b a", "b a", "b a"]


# ------------------------------------------------------------------------------------------- What'sUp


LEFT, RIGHT = "A mug to the left of a plate", "A mug to the right of a plate"
ON, UNDER = "A mug on a plate", "A mug under a plate"


def test_whatsup_controlled_a_pairs_and_sets(tmp_path):
    data = tmp_path / "whatsup_vlms" / "data"
    names = ["mug_left_of_plate", "mug_right_of_plate", "mug_on_plate", "mug_under_plate", "beer-bottle_on_armchair"]
    images = {name: png(data / "controlled_images" / f"{name}.jpeg") for name in names}
    path = write_json(
        data / "controlled_images_dataset.json",
        [
            {
                "image_path": "data/controlled_images/mug_left_of_plate.jpeg",
                "caption_options": [LEFT, ON, UNDER, RIGHT],
            },
            {
                "image_path": "data/controlled_images/mug_right_of_plate.jpeg",
                "caption_options": [RIGHT, LEFT, ON, UNDER],
            },
            {
                "image_path": "data/controlled_images/mug_on_plate.jpeg",
                "caption_options": [ON, LEFT, RIGHT, "A mug under the plate"],
            },
            {"image_path": "data/controlled_images/mug_under_plate.jpeg", "caption_options": [UNDER, RIGHT, ON, LEFT]},
            {
                "image_path": "data/controlled_images/beer-bottle_on_armchair.jpeg",
                "caption_options": [
                    "A beer bottle on a armchair",
                    "A beer bottle under a armchair",
                    "A beer bottle to the left of a armchair",
                    "A beer bottle to the right of a armchair",
                ],
            },
        ],
    )
    benchmark = load_whatsup_controlled(path, data)
    assert (benchmark.name, benchmark.protocol, benchmark.skipped) == ("whatsup/controlled_a", "whatsup", 0)
    pair_lr, pair_ou, mug = "mug|plate|left_right", "mug|plate|on_under", "mug|plate"
    assert benchmark.items == [
        Item(
            "0",
            [ImageRef(images["mug_left_of_plate"])],
            [LEFT, ON, UNDER, RIGHT],
            "left_of",
            {"answer": 0, "relation": "left", "pair": pair_lr, "set": mug, "caption_pair": (0, 3)},
        ),
        Item(
            "1",
            [ImageRef(images["mug_right_of_plate"])],
            [RIGHT, LEFT, ON, UNDER],
            "right_of",
            {"answer": 0, "relation": "right", "pair": pair_lr, "set": mug, "caption_pair": (0, 1)},
        ),
        Item(
            "2",
            [ImageRef(images["mug_on_plate"])],
            [ON, LEFT, RIGHT, "A mug under the plate"],
            "on",
            {"answer": 0, "relation": "on", "pair": pair_ou, "set": mug, "caption_pair": (0, 3)},
        ),
        Item(
            "3",
            [ImageRef(images["mug_under_plate"])],
            [UNDER, RIGHT, ON, LEFT],
            "under",
            {"answer": 0, "relation": "under", "pair": pair_ou, "set": mug, "caption_pair": (0, 2)},
        ),
        Item(
            "4",
            [ImageRef(images["beer-bottle_on_armchair"])],
            [
                "A beer bottle on a armchair",
                "A beer bottle under a armchair",
                "A beer bottle to the left of a armchair",
                "A beer bottle to the right of a armchair",
            ],
            "on",
            {"answer": 0, "relation": "on", "pair": "beer-bottle|armchair|on_under", "set": "beer-bottle|armchair"},
        ),
    ]
    # the repository root works as the image root too (image_path taken as given)
    assert load_whatsup_controlled(path, tmp_path / "whatsup_vlms").items == benchmark.items


def test_whatsup_controlled_b_and_errors(tmp_path):
    front = png(tmp_path / "controlled_clevr" / "cube_in-front_of_sphere.jpeg")
    behind = png(tmp_path / "controlled_clevr" / "cube_behind_sphere.jpeg")
    captions = [
        "A cube in front of a sphere",
        "A cube behind a sphere",
        "A cube to the left of a sphere",
        "A cube to the right of a sphere",
    ]
    path = write_json(
        tmp_path / "controlled_clevr_dataset.json",
        [
            {"image_path": "data/controlled_clevr/cube_in-front_of_sphere.jpeg", "caption_options": captions},
            {
                "image_path": "data/controlled_clevr/cube_behind_sphere.jpeg",
                "caption_options": [captions[1], captions[0], captions[2], captions[3]],
            },
            {"image_path": "data/controlled_clevr/cube_beside_sphere.jpeg", "caption_options": captions},
            {"image_path": "data/controlled_clevr/cone_left_of_sphere.jpeg", "caption_options": captions},
        ],
    )
    with pytest.raises(BenchmarkFormatError, match=r"controlled_clevr_dataset\.json, record 2: .*cube_beside_sphere"):
        load_whatsup_controlled(path, tmp_path)
    benchmark = load_whatsup_controlled(path, tmp_path, skip_missing=True)
    assert (benchmark.name, benchmark.skipped) == ("whatsup/controlled_b", 2)
    assert [(i.images, i.group, i.meta) for i in benchmark.items] == [
        (
            [ImageRef(front)],
            "in-front_of",
            {
                "answer": 0,
                "relation": "in-front",
                "pair": "cube|sphere|front_behind",
                "set": "cube|sphere",
                "caption_pair": (0, 1),
            },
        ),
        (
            [ImageRef(behind)],
            "behind",
            {
                "answer": 0,
                "relation": "behind",
                "pair": "cube|sphere|front_behind",
                "set": "cube|sphere",
                "caption_pair": (0, 1),
            },
        ),
    ]
    write_json(path, [{"image_path": "data/controlled_clevr/cube_behind_sphere.jpeg", "caption_options": []}])
    for skip in (False, True):  # an empty option list is an error even under skip_missing
        with pytest.raises(BenchmarkFormatError, match=r"controlled_clevr_dataset\.json, record 0: empty"):
            load_whatsup_controlled(path, tmp_path, skip_missing=skip)


def test_whatsup_coco_and_gqa_spatial(tmp_path):
    coco = {i: png(tmp_path / "val2017" / f"{i:012d}.jpg") for i in (139, 285)}
    gqa = png(tmp_path / "vg_images" / "2345.jpg")
    write_json(
        tmp_path / "coco_qa_two_obj.json",
        [
            [139, "A dog to the left of a cat", "A dog to the right of a cat"],
            [285, "A cup above a table", "A cup below a table"],
        ],
    )
    write_json(
        tmp_path / "vg_qa_one_obj.json", [[2345, "A photo of a dog on the top", "A photo of a dog on the bottom"]]
    )
    write_json(
        tmp_path / "vg_qa_two_obj.json", [[2345, "A dog in front of a car", "A dog behind a car"], [99, "a", "b"]]
    )
    coco_two, gqa_one, gqa_two = load_whatsup(tmp_path, skip_missing=True)
    assert (coco_two.name, coco_two.protocol) == ("whatsup/coco_two", "whatsup")
    assert coco_two.items == [
        Item(
            "0",
            [ImageRef(coco[139])],
            ["A dog to the left of a cat", "A dog to the right of a cat"],
            "left",
            {"answer": 0},
        ),
        Item("1", [ImageRef(coco[285])], ["A cup above a table", "A cup below a table"], "above", {"answer": 0}),
    ]
    assert gqa_one.name == "whatsup/gqa_one" and gqa_one.items == [
        Item(
            "0",
            [ImageRef(gqa)],
            ["A photo of a dog on the top", "A photo of a dog on the bottom"],
            "top",
            {"answer": 0},
        )
    ]
    assert (gqa_two.name, gqa_two.skipped, [i.group for i in gqa_two.items]) == ("whatsup/gqa_two", 1, ["front"])
    with pytest.raises(BenchmarkFormatError, match=r"vg_qa_two_obj\.json, record 1: image .*99\.jpg"):
        load_whatsup_qa(tmp_path / "vg_qa_two_obj.json", tmp_path / "vg_images", "gqa", "two")
    write_json(tmp_path / "coco_qa_one_obj.json", [[139]])
    with pytest.raises(BenchmarkFormatError, match=r"coco_qa_one_obj\.json, record 0: empty"):
        load_whatsup_qa(tmp_path / "coco_qa_one_obj.json", tmp_path / "val2017", "coco", "one", skip_missing=True)


# ----------------------------------------------------------------------------------------- Winoground


def test_winoground(tmp_path):
    images = {name: png(tmp_path / "images" / f"{name}.png") for name in ("ex_0_img_0", "ex_0_img_1", "ex_1_img_0")}
    lines = [
        {
            "id": 0,
            "image_0": "ex_0_img_0",
            "image_1": "ex_0_img_1",
            "caption_0": "an old person kisses a young person",
            "caption_1": "a young person kisses an old person",
            "tag": "Noun",
            "secondary_tag": "",
            "num_main_preds": 1,
            "collapsed_tag": "Object",
        },
        {
            "id": 1,
            "image_0": "ex_1_img_0",
            "image_1": "ex_1_img_1",
            "caption_0": "a",
            "caption_1": "b",
            "tag": "Relation",
            "secondary_tag": "Symbolic",
            "num_main_preds": 2,
            "collapsed_tag": "Relation",
        },
    ]
    path = tmp_path / "examples.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"examples\.jsonl, record 1: image .*ex_1_img_1\.png"):
        load_winoground(path, tmp_path / "images")
    benchmark = load_winoground(path, tmp_path / "images", skip_missing=True)
    assert (benchmark.name, benchmark.protocol, benchmark.skipped) == ("winoground", "winoground", 1)
    assert benchmark.items == [
        Item(
            "0",
            [ImageRef(images["ex_0_img_0"]), ImageRef(images["ex_0_img_1"])],
            ["an old person kisses a young person", "a young person kisses an old person"],
            "Noun",
            {"secondary_tag": "", "num_main_preds": 1, "collapsed_tag": "Object"},
        )
    ]
    path.write_text(json.dumps(lines[0]) + "\n" + json.dumps({**lines[1], "caption_1": ""}) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"examples\.jsonl, record 1: missing or empty 'caption_1'"):
        load_winoground(path, tmp_path / "images")


# ------------------------------------------------------------------------------------------------ MMVP


def write_questions(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Question ID", "Type", "Statement"])
        writer.writerows(rows)
    return path


def test_mmvp_vlm(tmp_path):
    root = tmp_path / "MMVP_VLM"
    images = {
        (folder, qid): png(root / "MLLM_VLM Images" / folder / f"{qid}.jpg")
        for folder, qids in (("Orientation", (1, 2)), ("Color", (3, 4)))
        for qid in qids
    }
    path = write_questions(
        root / "Questions.csv",
        [
            (1, "Orientation", "The dog is facing left"),
            (2, "Orientation", "The dog is facing right"),
            (3, "Color", "The flower is red, not blue"),
            (4, "Color", "The flower is blue"),
        ],
    )
    benchmark = load_mmvp(path)
    assert (benchmark.name, benchmark.protocol, benchmark.skipped) == ("mmvp_vlm", "mmvp", 0)
    assert benchmark.items == [
        Item(
            "1-2",
            [ImageRef(images["Orientation", 1]), ImageRef(images["Orientation", 2])],
            ["a photo of The dog is facing left", "a photo of The dog is facing right"],
            "Orientation",
            {"qids": (1, 2), "category": "Orientation and Direction"},
        ),
        Item(
            "3-4",
            [ImageRef(images["Color", 3]), ImageRef(images["Color", 4])],
            ["a photo of The flower is red, not blue", "a photo of The flower is blue"],
            "Color",
            {"qids": (3, 4), "category": "Orientation and Direction"},
        ),
    ]
    assert load_mmvp(path, root / "MLLM_VLM Images", prompt="").items[0].texts == [
        "The dog is facing left",
        "The dog is facing right",
    ]


def test_mmvp_parity_and_bad_rows(tmp_path):
    root = tmp_path / "MMVP_VLM"
    images = {qid: png(root / "MLLM_VLM Images" / "Texts" / f"{qid}.jpg") for qid in (1, 2, 4)}
    path = write_questions(root / "Questions.csv", [(2, "Texts", "even"), (1, "Texts", "odd")])
    # official ground truth: an odd qid's statement goes with the pair's first image (here 2.jpg), an even
    # one's with the second: the statements come out swapped so that texts[k] matches images[k]
    [item] = load_mmvp(path).items
    assert item.images == [ImageRef(images[2]), ImageRef(images[1])] and item.texts == [
        "a photo of odd",
        "a photo of even",
    ]
    write_questions(
        path,
        [
            (1, "Texts", "a"),
            (3, "Texts", "b"),
            (4, "Texts", "c"),
            (6, "Texts", "d"),
            (5, "Texts", "e"),
            (2, "Texts", "f"),
            (7, "Texts", "g"),
        ],
    )
    with pytest.raises(BenchmarkFormatError, match=r"Questions\.csv, record 7: odd number of rows"):
        load_mmvp(path)
    write_questions(path, [(1, "Texts", "a"), (3, "Texts", "b"), (5, "Texts", "e"), (2, "Texts", "f")])
    with pytest.raises(BenchmarkFormatError, match=r"Questions\.csv, record 1-3: .*same parity"):
        load_mmvp(path)
    write_questions(path, [(5, "Texts", "e"), (2, "Texts", "f")])
    with pytest.raises(BenchmarkFormatError, match=r"Questions\.csv, record 5-2: image .*Texts/5\.jpg"):
        load_mmvp(path)
    write_questions(
        path,
        [
            (1, "Texts", "a"),
            (3, "Texts", "b"),
            (5, "Texts", "e"),
            (2, "Texts", "f"),
            (1, "Texts", "a"),
            (2, "Texts", "b"),
            (9, "Texts", "x"),
        ],
    )
    benchmark = load_mmvp(path, skip_missing=True)
    assert benchmark.skipped == 3 and [item.id for item in benchmark.items] == ["1-2"]
