"""Retrieval (Karpathy COCO / Flickr30k) and zero-shot classification (ImageFolder / wds) loaders,
and the zero-shot metrics, on tiny fixtures in the official layouts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from callbacks.zero_shot import (
    class_embeddings,
    class_prompts,
    classification_metrics,
    evaluate_zero_shot,
    format_prompt,
)
from datamodules.benchmarks.base import BenchmarkFormatError
from datamodules.benchmarks.classification import (
    image_folder_classification,
    load_classification,
    load_classnames,
    load_templates,
    wds_classification,
)
from datamodules.benchmarks.imagenet import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
from datamodules.benchmarks.retrieval import RetrievalImages, load_karpathy
from datamodules.sources import CorruptSampleError


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A deterministic transform: the mean colour of the image, as a [3] tensor."""
    return torch.tensor(image.resize((1, 1)).getpixel((0, 0)), dtype=torch.float32)


def write_image(path: Path, colour: tuple[int, int, int], fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path, format=fmt)
    return path


def sentence(raw: str, sentid: int, imgid: int) -> dict:
    return {"tokens": raw.lower().strip(" .").split(), "raw": raw, "imgid": imgid, "sentid": sentid}


# ------------------------------------------------------------------------------ Karpathy files
def coco_fixture(tmp_path: Path) -> Path:
    """dataset_coco.json layout: records with filepath (train2014 / val2014) and cocoid."""
    records = [
        ("val2014", "COCO_val2014_000000000001.jpg", "test", ["A man on a moped. ", "A red helmet.", "A dirt road."]),
        ("train2014", "COCO_train2014_000000000002.jpg", "train", ["Two dogs.", "Dogs play."]),
        ("val2014", "COCO_val2014_000000000003.jpg", "restval", ["A cat.", "A cat sleeps."]),
        ("val2014", "COCO_val2014_000000000004.jpg", "test", [f"caption {j}" for j in range(6)]),
        ("val2014", "COCO_val2014_000000000005.jpg", "val", ["A bus."]),
    ]
    images = []
    for i, (folder, filename, split, raws) in enumerate(records):
        write_image(tmp_path / "coco" / folder / filename, (10 * i, 0, 0))
        images.append(
            {
                "filepath": folder,
                "sentids": list(range(10 * i, 10 * i + len(raws))),
                "filename": filename,
                "imgid": i,
                "split": split,
                "sentences": [sentence(raw, 10 * i + j, i) for j, raw in enumerate(raws)],
                "cocoid": i + 1,
            }
        )
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def flickr_fixture(tmp_path: Path) -> Path:
    """dataset_flickr30k.json layout: no filepath, images in one folder."""
    images = []
    for i, split in enumerate(["train", "test", "val", "test"]):
        filename = f"10000927{i}5.jpg"
        write_image(tmp_path / "flickr30k-images" / filename, (0, 20 * i, 0))
        raws = [f"image {i} caption {j}." for j in range(5)]
        images.append(
            {
                "sentids": list(range(5 * i, 5 * i + 5)),
                "imgid": i,
                "sentences": [sentence(raw, 5 * i + j, i) for j, raw in enumerate(raws)],
                "split": split,
                "filename": filename,
            }
        )
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return path


def test_karpathy_coco_test_split(tmp_path):
    rset = load_karpathy(coco_fixture(tmp_path), tmp_path / "coco")
    assert rset.name == "coco/test" and rset.skipped == 0 and rset.source == str(tmp_path / "dataset_coco.json")
    assert rset.images == [
        str((tmp_path / "coco/val2014/COCO_val2014_000000000001.jpg").resolve()),
        str((tmp_path / "coco/val2014/COCO_val2014_000000000004.jpg").resolve()),
    ]
    # raw captions exactly as in the file (trailing space kept), all of them (6 for the second image)
    assert rset.captions == [
        ["A man on a moped. ", "A red helmet.", "A dirt road."],
        [f"caption {j}" for j in range(6)],
    ]
    assert rset.texts[:4] == ["A man on a moped. ", "A red helmet.", "A dirt road.", "caption 0"]
    assert rset.text_to_image.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1]


def test_karpathy_coco_several_splits_and_caption_cap(tmp_path):
    rset = load_karpathy(coco_fixture(tmp_path), tmp_path / "coco", split=("train", "restval"), max_captions=1)
    assert rset.name == "coco/train+restval"
    assert [Path(p).name for p in rset.images] == ["COCO_train2014_000000000002.jpg", "COCO_val2014_000000000003.jpg"]
    assert rset.captions == [["Two dogs."], ["A cat."]]
    capped = load_karpathy(coco_fixture(tmp_path), tmp_path / "coco", max_captions=5)
    assert [len(c) for c in capped.captions] == [3, 5]


def test_karpathy_flickr30k(tmp_path):
    rset = load_karpathy(flickr_fixture(tmp_path), tmp_path / "flickr30k-images", name="f30k")
    assert rset.name == "f30k" and len(rset) == 2
    assert [Path(p).name for p in rset.images] == ["1000092715.jpg", "1000092735.jpg"]
    assert rset.captions == [[f"image 1 caption {j}." for j in range(5)], [f"image 3 caption {j}." for j in range(5)]]


def test_karpathy_missing_image_raises_or_is_skipped(tmp_path):
    path = flickr_fixture(tmp_path)
    (tmp_path / "flickr30k-images" / "1000092715.jpg").unlink()
    with pytest.raises(BenchmarkFormatError, match=r"dataset_flickr30k\.json, image record 1 \(1000092715\.jpg\)"):
        load_karpathy(path, tmp_path / "flickr30k-images")
    rset = load_karpathy(path, tmp_path / "flickr30k-images", skip_missing=True)
    assert rset.skipped == 1 and [Path(p).name for p in rset.images] == ["1000092735.jpg"]
    assert rset.captions == [[f"image 3 caption {j}." for j in range(5)]]
    (tmp_path / "flickr30k-images" / "1000092735.jpg").unlink()
    with pytest.raises(BenchmarkFormatError, match="no usable images in split test.*skipped for missing files: 2"):
        load_karpathy(path, tmp_path / "flickr30k-images", skip_missing=True)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.pop("sentences"), r"image record 1 \(1000092715\.jpg\): missing or empty 'sentences'"),
        (lambda r: r["sentences"][2].update(raw="  "), r"image record 1 \(1000092715\.jpg\): sentence\(s\) \[2\]"),
        (lambda r: r["sentences"][0].pop("raw"), r"image record 1 \(1000092715\.jpg\): sentence\(s\) \[0\]"),
        (lambda r: r.pop("filename"), r"image record 1: missing or empty 'filename'"),
        (lambda r: r.pop("split"), r"image record 1: not an object with a 'split' string"),
    ],
)
def test_karpathy_malformed_records_name_file_and_record(tmp_path, edit, message):
    path = flickr_fixture(tmp_path)
    data = json.loads(path.read_text())
    edit(data["images"][1])
    path.write_text(json.dumps(data))
    with pytest.raises(BenchmarkFormatError, match=r"dataset_flickr30k\.json, " + message):
        load_karpathy(path, tmp_path / "flickr30k-images")


def test_karpathy_malformed_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BenchmarkFormatError, match="bad.json: cannot read"):
        load_karpathy(bad, tmp_path)
    bad.write_text(json.dumps([{"filename": "x.jpg"}]))
    with pytest.raises(BenchmarkFormatError, match="bad.json: expected a JSON object with an 'images' list"):
        load_karpathy(bad, tmp_path)
    with pytest.raises(
        BenchmarkFormatError, match=r"no usable images in split nosuch \(splits in the file: \['restval'"
    ):
        load_karpathy(coco_fixture(tmp_path), tmp_path / "coco", split="nosuch")


def test_retrieval_images_and_loader(tmp_path):
    rset = load_karpathy(coco_fixture(tmp_path), tmp_path / "coco")
    batches = list(rset.dataloader(to_tensor, batch_size=2))
    assert len(batches) == 1
    batch = batches[0]
    assert torch.allclose(batch["image"], torch.tensor([[0.0, 0.0, 0.0], [30.0, 0.0, 0.0]]), atol=2)  # JPEG
    assert batch["index"].tolist() == [0, 1]
    assert batch["captions"] == rset.captions
    assert set(RetrievalImages(rset.images, to_tensor)[1]) == {"image", "index"}
    Path(rset.images[1]).write_bytes(b"not an image")
    with pytest.raises(CorruptSampleError, match="COCO_val2014_000000000004.jpg: cannot read image"):
        RetrievalImages(rset.images, to_tensor)[1]


# ------------------------------------------------------------------------ classification data
CLASS_FOLDERS = {
    "n01": [(255, 0, 0), (250, 0, 0)],
    "n02": [(0, 255, 0)],
    "n03": [(0, 0, 255), (0, 0, 250), (0, 0, 245)],
}


def image_folder_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "val"
    for folder, colours in CLASS_FOLDERS.items():
        for i, colour in enumerate(colours):
            write_image(root / folder / f"img{i}.png", colour)
    return root


def test_image_folder_classification(tmp_path):
    root = image_folder_fixture(tmp_path)
    cset = image_folder_classification(root, to_tensor, classnames=["red", "green", "blue"], templates=["a {c}."])
    assert cset.name == "val" and cset.classnames == ["red", "green", "blue"] and cset.templates == ["a {c}."]
    assert len(cset.dataset) == 6 and cset.skipped == 0
    images, labels = next(iter(cset.dataloader(batch_size=8)))
    assert labels.tolist() == [0, 0, 1, 2, 2, 2]
    assert images[:, 0].tolist() == [255.0, 250.0, 0.0, 0.0, 0.0, 0.0]
    assert images[:, 2].tolist() == [0.0, 0.0, 0.0, 255.0, 250.0, 245.0]
    # class names from a text file (one per line, trailing blank line ignored), default templates
    names = tmp_path / "names.txt"
    names.write_text("red\ngreen\nblue\n\n")
    cset = load_classification(root, to_tensor, classnames=names)
    assert cset.classnames == ["red", "green", "blue"] and cset.templates == list(OPENAI_IMAGENET_TEMPLATES)


def test_image_folder_errors(tmp_path):
    root = image_folder_fixture(tmp_path)
    with pytest.raises(BenchmarkFormatError, match=r"val: 3 class folders but 1000 class names \(the ImageNet-1k"):
        image_folder_classification(root, to_tensor)
    with pytest.raises(BenchmarkFormatError, match="val: 3 class folders but 2 class names"):
        image_folder_classification(root, to_tensor, classnames=["a", "b"])
    with pytest.raises(BenchmarkFormatError, match="nowhere: not an image folder tree"):
        image_folder_classification(tmp_path / "nowhere", to_tensor, classnames=["a"])
    (root / "n02" / "img0.png").write_bytes(b"broken")
    cset = image_folder_classification(root, to_tensor, classnames=["a", "b", "c"])
    with pytest.raises(CorruptSampleError, match=r"n02/img0\.png: cannot read image"):
        cset.dataset[2]


def test_class_name_and_template_lists(tmp_path):
    assert load_classnames() == list(IMAGENET_CLASSNAMES) and len(IMAGENET_CLASSNAMES) == 1000
    assert IMAGENET_CLASSNAMES[0] == "tench" and IMAGENET_CLASSNAMES[-1] == "toilet paper"
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert OPENAI_IMAGENET_TEMPLATES[0] == "a bad photo of a {c}."
    assert OPENAI_IMAGENET_TEMPLATES[-1] == "a tattoo of the {c}."
    names = tmp_path / "names.txt"
    names.write_text("a\n\nb\n")
    with pytest.raises(BenchmarkFormatError, match=r"names.txt: blank class name line\(s\) \[2\]"):
        load_classnames(names)
    with pytest.raises(BenchmarkFormatError, match="non-empty strings"):
        load_classnames(["a", " "])
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {c}.\nitap of a {}.\n")
    assert load_templates(templates) == ["a photo of a {c}.", "itap of a {}."]
    templates.write_text("a photo of a {c}.\na photo.\n")
    with pytest.raises(BenchmarkFormatError, match=r"templates.txt: template\(s\) without .*\['a photo.'\]"):
        load_templates(templates)


def wds_fixture(tmp_path: Path, labels_per_shard: list[list[object]], with_metadata: bool = True) -> Path:
    """clip_benchmark's wds layout: test/nshards.txt, test/{i}.tar, classnames.txt, templates."""
    root = tmp_path / "wds_tiny"
    (root / "test").mkdir(parents=True)
    (root / "test" / "nshards.txt").write_text(f"{len(labels_per_shard)}\n")
    n = 0
    for shard, labels in enumerate(labels_per_shard):
        with wds.TarWriter(str(root / "test" / f"{shard}.tar")) as sink:
            for label in labels:
                png = tmp_path / "tmp.png"
                write_image(png, (n, 2 * n, 0))
                sample = {"__key__": f"s{n:04d}", "webp" if n % 2 else "png": png.read_bytes()}
                if label is not None:
                    sample["cls"] = str(label).encode()
                sink.write(sample)
                n += 1
    if with_metadata:
        (root / "classnames.txt").write_text("cat\ndog\nbird\n")
        (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na drawing of a {c}.\n")
    return root


def test_wds_classification(tmp_path):
    root = wds_fixture(tmp_path, [[0, 2, 1], [1, 1]])
    cset = load_classification(root, to_tensor)
    assert cset.name == "wds_tiny/test" and cset.source == str(root)
    assert cset.classnames == ["cat", "dog", "bird"]
    assert cset.templates == ["a photo of a {c}.", "a drawing of a {c}."]
    images, labels = next(iter(cset.dataloader(batch_size=10)))
    assert labels.tolist() == [0, 2, 1, 1, 1]
    assert images[:, 1].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    # explicit shards and class names override the folder's files; explicit URL list works too
    cset = wds_classification([str(root / "test" / "1.tar")], to_tensor, classnames=["x", "y"])
    assert [label for _, label in cset.dataset] == [1, 1] and cset.templates == list(OPENAI_IMAGENET_TEMPLATES)


def test_wds_shards_are_split_across_loader_workers(tmp_path):
    cset = load_classification(wds_fixture(tmp_path, [[0, 2, 1], [1, 1]]), to_tensor)
    labels = torch.cat([labels for _, labels in cset.dataloader(batch_size=2, num_workers=2)])
    assert sorted(labels.tolist()) == [0, 1, 1, 1, 2]  # every sample once


def test_wds_bad_samples_name_shard_and_key(tmp_path):
    root = wds_fixture(tmp_path, [[0, 3, 1], [None, 2]])
    cset = wds_classification(root, to_tensor)
    with pytest.raises(CorruptSampleError, match=r"test/0\.tar \(key s0001\): label 3 outside \[0, 3\)"):
        list(cset.dataset)
    cset = wds_classification(root, to_tensor, skip_corrupt=True)
    assert [label for _, label in cset.dataset] == [0, 1, 2] and cset.skipped == 2
    with pytest.raises(BenchmarkFormatError, match=r"nshards.txt: cannot read"):
        wds_classification(root, to_tensor, split="train")


# --------------------------------------------------------------------------------- metrics
def test_metrics_on_an_imbalanced_set():
    labels = torch.tensor([0, 0, 0, 0, 1, 2])
    logits = torch.tensor(
        [
            [0.9, 0.1, 0.0],
            [0.8, 0.1, 0.1],
            [0.7, 0.2, 0.1],
            [0.6, 0.3, 0.1],
            [0.5, 0.1, 0.4],  # class 1: ranked 3rd
            [0.1, 0.2, 0.7],
        ]
    )
    metrics = classification_metrics(logits, labels, ks=(1, 2, 3, 5))
    assert metrics["top1"] == 5 / 6 and metrics["top2"] == 5 / 6 and metrics["top3"] == 1.0
    assert math.isnan(metrics["top5"])  # more than the 3 classes, as clip_benchmark's acc5
    assert metrics["mean_per_class_recall"] == pytest.approx((1 + 0 + 1) / 3)
    assert list(classification_metrics(logits, labels)) == ["top1", "top5", "mean_per_class_recall"]


def test_mean_per_class_recall_ignores_classes_absent_from_labels_and_ties_count_as_failures():
    labels = torch.tensor([0, 0, 1, 1, 1])
    logits = torch.tensor(
        [
            [0.9, 0.0, 0.0, 0.1],
            [0.0, 0.1, 0.0, 0.9],  # predicted as class 3, which has no samples
            [0.0, 0.9, 0.0, 0.0],
            [0.5, 0.5, 0.0, 0.0],  # a tie between the right class and a wrong one: a failure (the one tie rule)
            [0.0, 0.2, 0.8, 0.0],
        ]
    )
    metrics = classification_metrics(logits, labels, ks=(1, 4, 5))
    assert metrics["mean_per_class_recall"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert metrics["top4"] == 1.0 and math.isnan(metrics["top5"])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        classification_metrics(logits, torch.tensor([0, 0, 1, 1, 4]))


class OneHotModel:
    """encode_text: the one-hot of the first class name found in the text (plus a template-dependent
    offset on the last axis); encode_image: the image tensors themselves."""

    device = torch.device("cpu")

    def __init__(self, classnames):
        self.classnames = classnames
        self.calls: list[list[str]] = []

    def encode_text(self, texts):
        self.calls.append(list(texts))
        out = torch.zeros(len(texts), len(self.classnames) + 1)
        for i, text in enumerate(texts):
            out[i, next(j for j, c in enumerate(self.classnames) if c in text.rstrip(".").split())] = 1.0
            out[i, -1] = 1.0 if text.startswith("a drawing") else 0.0
        return torch.nn.functional.normalize(out, dim=-1)

    def encode_image(self, images):
        return torch.nn.functional.normalize(images, dim=-1)


def test_class_embeddings_average_normalised_prompts():
    model = OneHotModel(["cat", "dog"])
    emb = class_embeddings(model, ["cat", "dog"], ["a photo of a {c}.", "a drawing of a {}."], batch_size=3)
    assert model.calls == [["a photo of a cat.", "a drawing of a cat.", "a photo of a dog."], ["a drawing of a dog."]]
    s = 2**-0.5
    mean = torch.tensor([(1 + s) / 2, 0.0, s / 2])
    assert torch.allclose(emb[0], mean / mean.norm())
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2))
    # class-specific prompts (CuPL style) with different counts per class
    emb = class_embeddings(model, ["cat", "dog"], {"cat": ["cat"], "dog": ["dog", "a drawing dog"]})
    assert torch.allclose(emb[0], torch.tensor([1.0, 0.0, 0.0]))
    assert class_prompts(["dog"], [lambda c: f"itap of a {c}."]) == [["itap of a dog."]]
    assert format_prompt("a {c} and a {}", "cat") == "a cat and a cat"


def test_evaluate_zero_shot_with_a_fake_model():
    model = OneHotModel(["cat", "dog", "bird"])
    images = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0.9, 1, 0], [0, 0.2, 1, 0], [1, 0.5, 0, 0]])
    labels = torch.tensor([0, 1, 2, 2, 1])
    loader = [(images[:2], labels[:2]), {"image": images[2:], "label": labels[2:]}]
    metrics = evaluate_zero_shot(model, loader, ["cat", "dog", "bird"], ["a photo of a {c}."], ks=(1, 2))
    # predictions: 0, 1, 2, 2, 0 -> top1 4/5; recalls cat 1/1, dog 1/2, bird 2/2
    assert metrics == {"top1": 4 / 5, "top2": 1.0, "mean_per_class_recall": pytest.approx((1 + 0.5 + 1) / 3)}
