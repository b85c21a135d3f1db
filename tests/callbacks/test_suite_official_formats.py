"""Official-format fixtures -> loaders -> suite -> known scores, with a fake model whose
image-text similarities are set by hand (images are solid colours whose red value names them)."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from callbacks.suite import evaluate_suite, load_benchmarks


class HandSetModel(torch.nn.Module):
    """encode_image / encode_text returning vectors whose dot products are the given similarities."""

    def __init__(self, similarities: dict[tuple[int, str], float], n_images: int = 16):
        super().__init__()
        self.similarities, self.n = similarities, n_images
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return self.anchor.device

    def data_transforms(self):
        return {"eval_transform": lambda image: torch.tensor(image.getpixel((0, 0))[0])}

    def encode_image(self, ids):
        return torch.eye(self.n)[ids.long()]  # image k -> unit vector e_k

    def encode_text(self, texts):
        out = torch.zeros(len(texts), self.n)
        for row, text in enumerate(texts):
            for (image, t), value in self.similarities.items():
                if t == text:
                    out[row, image] = value  # so that s(image k, text) = value
        return out


def _image(path: Path, red: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (red, 0, 0)).save(path, format="PNG")


def test_sugarcrepe(tmp_path):
    for i in (1, 2, 3):
        _image(tmp_path / "val2017" / f"{i:012d}.jpg", i)
    records = {
        str(i): {"filename": f"{i:012d}.jpg", "caption": f"pos{i}", "negative_caption": f"neg{i}"} for i in (1, 2, 3)
    }
    (tmp_path / "swap_att.json").write_text(json.dumps(records))
    model = HandSetModel(
        {(1, "pos1"): 0.5, (1, "neg1"): 0.1, (2, "pos2"): 0.2, (2, "neg2"): 0.3, (3, "pos3"): 0.4, (3, "neg3"): 0.4}
    )  # right, wrong, tie (a failure)
    spec = {
        "kind": "sugarcrepe",
        "json_dir_or_files": [str(tmp_path / "swap_att.json")],
        "image_root": str(tmp_path / "val2017"),
    }
    results = evaluate_suite(model, load_benchmarks([spec]), num_workers=0)
    assert results["sugarcrepe/swap_att"]["accuracy"] == pytest.approx(1 / 3)
    assert results["sugarcrepe/swap_att"]["items"] == 3


def test_winoground(tmp_path):
    for name, red in (("ex_0_img_0", 1), ("ex_0_img_1", 2), ("ex_1_img_0", 3), ("ex_1_img_1", 4)):
        _image(tmp_path / "images" / f"{name}.png", red)
    lines = [
        {
            "id": k,
            "image_0": f"ex_{k}_img_0",
            "image_1": f"ex_{k}_img_1",
            "caption_0": f"c{k}0",
            "caption_1": f"c{k}1",
            "tag": "Object",
            "secondary_tag": "",
            "num_main_preds": 1,
            "collapsed_tag": "Object",
        }
        for k in (0, 1)
    ]
    (tmp_path / "examples.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    model = HandSetModel(
        {
            (1, "c00"): 0.5,
            (1, "c01"): 0.2,
            (2, "c00"): 0.3,
            (2, "c01"): 0.4,  # example 0: all right
            (3, "c10"): 0.5,
            (3, "c11"): 0.2,
            (4, "c10"): 0.6,
            (4, "c11"): 0.4,  # example 1: text and image wrong
        }
    )
    spec = {
        "kind": "winoground",
        "examples_jsonl": str(tmp_path / "examples.jsonl"),
        "image_root": str(tmp_path / "images"),
    }
    figures = evaluate_suite(model, load_benchmarks([spec]), num_workers=0)["winoground"]
    assert (figures["text_score"], figures["image_score"], figures["group_score"]) == (0.5, 0.5, 0.5)


def test_whatsup_controlled_images(tmp_path):
    data = tmp_path / "data"
    left, right, on, under = (
        "A mug to the left of a plate",
        "A mug to the right of a plate",
        "A mug on a plate",
        "A mug under a plate",
    )
    names = {
        "mug_left_of_plate": (1, left),
        "mug_right_of_plate": (2, right),
        "mug_on_plate": (3, on),
        "mug_under_plate": (4, under),
    }
    records = []
    for name, (red, caption) in names.items():
        _image(data / "controlled_images" / f"{name}.jpeg", red)
        records.append(
            {
                "image_path": f"data/controlled_images/{name}.jpeg",
                "caption_options": [caption] + [c for c in (left, right, on, under) if c != caption],
            }
        )
    (data / "controlled_images_dataset.json").write_text(json.dumps(records))
    sims = {(k, c): 0.1 for k in (1, 2, 3, 4) for c in (left, right, on, under)}
    sims.update({(1, left): 0.5, (2, right): 0.5, (3, on): 0.5, (4, under): 0.5})
    sims[(2, left)] = 0.6  # the right-of image prefers "left": one wrong image breaks its pair and the set
    spec = {"kind": "whatsup", "data_dir": str(data)}
    figures = evaluate_suite(HandSetModel(sims), load_benchmarks([spec]), num_workers=0)["whatsup/controlled_a"]
    assert figures["individual_accuracy"] == 0.75
    assert figures["pair_accuracy"] == 0.5  # on/under right, left/right wrong
    assert figures["set_accuracy"] == 0.0
    # relaxed: left/right pair 0.75/1.30 (image 1 on "left") > 0.80/1.55 (image 2 on "left"): right
    assert figures["relaxed_pair_accuracy"] == 1.0
    assert figures["pair_image_cosine"] == 0.0  # orthogonal image vectors by construction


def test_sugarcrepe_family_average_and_brittleness_on_sugarcrepe_pp_files(tmp_path):
    for i in (1, 2):
        _image(tmp_path / "val2017" / f"{i:012d}.jpg", i)
    for category, (pos, neg) in {"swap_att": ("pa", "na"), "swap_obj": ("po", "no")}.items():
        records = {
            "0": {"filename": f"{1:012d}.jpg", "caption": pos, "negative_caption": neg},
            "1": {"filename": f"{2:012d}.jpg", "caption": pos + "2", "negative_caption": neg + "2"},
        }
        (tmp_path / f"{category}.json").write_text(json.dumps(records))
    # swap_att: both right; swap_obj: one right -> SWAP = (1 + 0.5) / 2
    sims = {
        (1, "pa"): 0.5,
        (1, "na"): 0.1,
        (2, "pa2"): 0.5,
        (2, "na2"): 0.1,
        (1, "po"): 0.5,
        (1, "no"): 0.1,
        (2, "po2"): 0.1,
        (2, "no2"): 0.5,
    }
    files = [str(tmp_path / "swap_att.json"), str(tmp_path / "swap_obj.json")]
    spec = {"kind": "sugarcrepe", "json_dir_or_files": files, "image_root": str(tmp_path / "val2017")}
    results = evaluate_suite(HandSetModel(sims), load_benchmarks([spec]), num_workers=0)
    assert results["sugarcrepe/averages"] == {"swap": 0.75, "items": 4}

    pp = [
        {"id": 0, "filename": f"{1:012d}.jpg", "caption": "p", "caption2": "p rewritten", "negative_caption": "n"},
        {"id": 1, "filename": f"{2:012d}.jpg", "caption": "q", "caption2": "q rewritten", "negative_caption": "m"},
    ]
    (tmp_path / "pp").mkdir()
    (tmp_path / "pp" / "swap_obj.json").write_text(json.dumps(pp))
    sims = {
        (1, "p"): 0.5,
        (1, "p rewritten"): 0.4,
        (1, "n"): 0.1,  # positive > rewrite > negative: holds
        (2, "q"): 0.5,
        (2, "q rewritten"): 0.05,
        (2, "m"): 0.1,
    }  # the rewrite falls below the negative
    spec = {
        "kind": "brittleness",
        "json_dir_or_files": [str(tmp_path / "pp" / "swap_obj.json")],
        "image_root": str(tmp_path / "val2017"),
    }
    results = evaluate_suite(HandSetModel(sims), load_benchmarks([spec]), num_workers=0)
    (name,) = results
    assert name.startswith("brittleness/") and results[name]["brittleness"] == 0.5


def test_aro_vg_relation_crops_the_box(tmp_path):
    # one image, left half red 1, right half red 2: the box decides which "image" the model sees
    image = Image.new("RGB", (8, 8), (1, 0, 0))
    image.paste((2, 0, 0), (4, 0, 8, 8))
    (tmp_path / "images").mkdir()
    image.save(tmp_path / "images" / "1.jpg", format="PNG")
    records = [
        {
            "image_path": "1.jpg",
            "bbox_x": 0,
            "bbox_y": 0,
            "bbox_w": 4,
            "bbox_h": 8,
            "relation_name": "on",
            "true_caption": "t1",
            "false_caption": "f1",
        },
        {
            "image_path": "1.jpg",
            "bbox_x": 4,
            "bbox_y": 0,
            "bbox_w": 4,
            "bbox_h": 8,
            "relation_name": "on",
            "true_caption": "t2",
            "false_caption": "f2",
        },
    ]
    (tmp_path / "visual_genome_relation.json").write_text(json.dumps(records))
    # crop 1 (left) prefers its true caption; crop 2 (right) would only be right if it were the left crop
    sims = {(1, "t1"): 0.5, (1, "f1"): 0.1, (1, "t2"): 0.9, (2, "t2"): 0.1, (2, "f2"): 0.5}
    spec = {
        "kind": "vg_relation",
        "json_path": str(tmp_path / "visual_genome_relation.json"),
        "image_root": str(tmp_path / "images"),
    }
    figures = evaluate_suite(HandSetModel(sims), load_benchmarks([spec]), num_workers=0)["aro/vg_relation"]
    assert figures["accuracy"] == 0.5 and figures["macro_accuracy"] == 0.5


def test_mmvp_vlm_csv(tmp_path):
    import csv

    root = tmp_path / "MMVP_VLM"
    for qid, red in ((1, 1), (2, 2), (3, 3), (4, 4)):
        _image(root / "MLLM_VLM Images" / "Orientation" / f"{qid}.jpg", red)
    with (root / "Questions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Question ID", "Type", "Statement"])
        writer.writerows(
            [
                (1, "Orientation", "left"),
                (2, "Orientation", "right"),
                (3, "Orientation", "up"),
                (4, "Orientation", "down"),
            ]
        )
    sims = {
        (1, "left"): 0.6,
        (2, "left"): 0.2,
        (1, "right"): 0.1,
        (2, "right"): 0.5,  # pair 1 right
        (3, "up"): 0.6,
        (4, "up"): 0.2,
        (3, "down"): 0.5,
        (4, "down"): 0.5,
    }  # pair 2: a tie on "down"
    spec = {"kind": "mmvp", "questions_csv": str(root / "Questions.csv"), "prompt": ""}
    benchmarks = load_benchmarks([spec])
    assert evaluate_suite(HandSetModel(sims), benchmarks, num_workers=0)["mmvp_vlm"]["pair_accuracy"] == 0.5
    benchmarks[0].options["tie_rule"] = "reference"  # the official script counts that tie as right
    assert evaluate_suite(HandSetModel(sims), benchmarks, num_workers=0)["mmvp_vlm"]["pair_accuracy"] == 1.0
