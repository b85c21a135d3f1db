import io
import json

import pytest
import torch
from PIL import Image

from datamodules import CorruptSampleError, ImageCaptionDataModule, ShapesWorldConfig
from datamodules.hard_negatives import NegativeCaptions
from datamodules.shapesworld import generate_sample


def _tokenizer(texts):
    return torch.tensor([[len(t), sum(map(ord, t)) % 997] for t in texts])


def _connect(dm):
    to_tensor = lambda image: torch.zeros(3, 4, 4) + image.getpixel((0, 0))[0]  # noqa: E731
    dm.connect(tokenizer=_tokenizer, train_transform=to_tensor, eval_transform=to_tensor)
    return dm


def _batches(dm, epoch=0, loader="train"):
    dataloader = dm.train_dataloader() if loader == "train" else dm.val_dataloader()
    dataloader.sampler.set_epoch(epoch)
    return list(dataloader)


def test_shapesworld_exact_negatives_in_batches():
    types = ["swap_attribute", "replace_relation"]
    dm = _connect(
        ImageCaptionDataModule(
            batch_size=8, num_workers=0, hard_negatives=types, shapesworld=ShapesWorldConfig(n_train=16, image_size=16)
        )
    )
    batch = _batches(dm)[0]
    assert batch["negatives"].shape == (8, 2, 2) and batch["negative_mask"].shape == (8, 2)
    for key, caption, negatives, mask in zip(
        batch["key"], batch["caption"], batch["negative_captions"], batch["negative_mask"]
    ):
        sample = generate_sample(int(key.split("-")[1]), split="train", image_size=16)
        assert caption == sample["captions"][0]  # exact negatives belong to the primary caption
        assert negatives == [sample["negatives"][t] for t in types]
        assert mask.tolist() == [n is not None for n in negatives]
    assert (~batch["negative_mask"]).any() and batch["negative_mask"].any()  # missing negatives are masked


def test_same_batches_whatever_the_number_of_workers():
    def run(workers):
        dm = _connect(
            ImageCaptionDataModule(
                batch_size=4,
                num_workers=workers,
                hard_negatives=["replace_object"],
                shapesworld=ShapesWorldConfig(n_train=12, image_size=16),
            )
        )
        return [(b["key"], b["caption"], b["negative_captions"]) for b in _batches(dm, epoch=3)]

    assert run(0) == run(2)


def test_caption_choice_changes_with_epoch_and_is_reproducible():
    dm = _connect(
        ImageCaptionDataModule(batch_size=32, num_workers=0, shapesworld=ShapesWorldConfig(n_train=64, image_size=16))
    )

    def captions(epoch):
        return {k: c for b in _batches(dm, epoch) for k, c in zip(b["key"], b["caption"])}

    assert captions(1) == captions(1)
    assert captions(1) != captions(2)


def _png(value):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (value, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def negclip_tsv(tmp_path):
    for i in range(3):
        (tmp_path / f"img{i}.png").write_bytes(_png(10 * (i + 1)))
    rows = [
        ("a dog on a red sofa", "img0.png", ["a sofa on a red dog", "a red dog on a sofa"], [2]),
        ("a brown dog sleeping on a sofa", "img0.png", ["a brown sofa sleeping on a dog"], [1, 2]),
        ("two cats near a window", "img1.png", ["a window near two cats"], [0]),
        ("a cat looking at a window", "img2.png", [], [0, 2]),
    ]
    lines = ["\ttitle\tfilepath\tneg_caption\tneg_image"]
    lines += [f"{i}\t{t}\t{f}\t{json.dumps(n)}\t{json.dumps(m)}" for i, (t, f, n, m) in enumerate(rows)]
    (tmp_path / "train_neg_clip.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path / "train_neg_clip.tsv"


def test_negclip_tsv_precomputed_negatives_and_hard_images(negclip_tsv):
    dm = _connect(
        ImageCaptionDataModule(
            source="manifest",
            train=str(negclip_tsv),
            batch_size=2,
            num_workers=0,
            hard_negatives=["precomputed"],
            hard_images=True,
        )
    )
    batches = _batches(dm)
    assert len(batches) == 2
    rows = {
        "a dog on a red sofa": ["a sofa on a red dog", "a red dog on a sofa"],
        "a brown dog sleeping on a sofa": ["a brown sofa sleeping on a dog"],
        "two cats near a window": ["a window near two cats"],
        "a cat looking at a window": [],
    }
    for batch in batches:
        assert batch["image"].shape[0] == 4  # 2 originals + their 2 hard images
        for caption, (negative,), valid in zip(batch["caption"], batch["negative_captions"], batch["negative_mask"]):
            assert (negative in rows[caption]) if rows[caption] else (negative is None and not valid)
        # rows 0 and 1 show the same image: same image_id
        ids = dict(zip(batch["caption"], batch["image_id"].tolist()))
        if "a dog on a red sofa" in ids and "a brown dog sleeping on a sofa" in ids:
            assert ids["a dog on a red sofa"] == ids["a brown dog sleeping on a sofa"]
    # the neighbour of row 0 is always row 2 (its only neg_image)
    for batch in batches:
        originals, neighbours = batch["caption"][:2], batch["caption"][2:]
        for original, neighbour in zip(originals, neighbours):
            if original == "a dog on a red sofa":
                assert neighbour == "two cats near a window"


def test_negclip_tsv_errors(tmp_path):
    (tmp_path / "bad.tsv").write_text("title\tfilepath\tneg_caption\tneg_image\na\timg.png\tnot a list\t[0]\n")
    with pytest.raises(CorruptSampleError, match="row 0: neg_caption / neg_image are not list literals"):
        ImageCaptionDataModule(source="manifest", train=str(tmp_path / "bad.tsv")).records("train")
    (tmp_path / "bad2.tsv").write_text("title\tfilepath\tneg_caption\tneg_image\na\timg.png\t[]\t[5]\n")
    with pytest.raises(CorruptSampleError, match=r"neg_image must list row indices in \[0, 1\)"):
        ImageCaptionDataModule(source="manifest", train=str(tmp_path / "bad2.tsv")).records("train")


def test_unknown_source_of_negatives_is_explained():
    dm = _connect(
        ImageCaptionDataModule(
            batch_size=2,
            num_workers=0,
            hard_negatives=["precomputed"],
            shapesworld=ShapesWorldConfig(n_train=4, image_size=16),
        )
    )
    with pytest.raises(ValueError, match="precomputed.*NegCLIP TSV"):
        _batches(dm)


def _bag_of_words(text):
    return " ".join(sorted(text.lower().split()))


def _spacing(text):
    return " ".join(text.split())


def test_precomputed_negatives_equal_after_normalisation_are_dropped():
    """CLIP's tokenizer lower-cases and collapses whitespace: "A Dog on a red  sofa" is the positive again."""
    negatives = NegativeCaptions(["precomputed"])
    caption = "a dog on a red sofa"
    record = {"negative_captions": ["A Dog on a red  sofa", " a dog on a RED sofa\n", "a sofa on a red dog"]}
    drawn = {negatives(record, caption, index, epoch)[0] for index in range(20) for epoch in range(3)}
    assert drawn == {"a sofa on a red dog"}
    assert negatives({"negative_captions": ["A DOG ON A RED SOFA"]}, caption, 0, 0) == [None]
    # another text tower, another normalisation: a case-sensitive one keeps the case variants
    cased = NegativeCaptions(["precomputed"], normalize=_spacing)
    drawn = {cased(record, caption, index, epoch)[0] for index in range(20) for epoch in range(3)}
    assert drawn == set(record["negative_captions"])


def test_exact_and_rule_based_negatives_get_the_same_check():
    caption = "a large red square above a small blue circle"
    record = {"negatives": {"swap_attribute": "A LARGE red square above a small blue  circle"}}
    assert NegativeCaptions(["swap_attribute"])(record, caption, 0, 0) == [None]
    assert NegativeCaptions(["swap_attribute"], normalize=_spacing)(record, caption, 0, 0) == [
        record["negatives"]["swap_attribute"]
    ]
    bags = NegativeCaptions(["negclip", "bigram_shuffle"], normalize=_bag_of_words)
    assert all(gen.normalize is _bag_of_words for gen in bags.engine.generators)
    assert bags({}, caption, 0, 0) == [None, None]  # a swap or a shuffle keeps the bag of words
    assert None not in NegativeCaptions(["negclip", "bigram_shuffle"])({}, caption, 0, 0)


def test_data_module_compares_negatives_after_the_connected_text_towers_cleaning():
    import open_clip

    from datamodules import ImageCaptionDataModule
    from datamodules.text_augment.base import clip_normalize

    dm = ImageCaptionDataModule(hard_negatives=["negclip"])
    clip_tokenizer = open_clip.SimpleTokenizer(context_length=16)
    dm.connect(clip_tokenizer, lambda image: image, lambda image: image)
    assert dm.negative_captions().normalize is clip_normalize  # CLIP's lower-casing cleaning, fast path
    assert clip_normalize("  A Large  ELEPHANT ") == clip_tokenizer.clean_fn("  A Large  ELEPHANT ")
    cased = open_clip.tokenizer.HFTokenizer.__new__(open_clip.tokenizer.HFTokenizer)
    cased.clean_fn = open_clip.tokenizer._clean_whitespace  # a case-sensitive tower keeps case differences
    dm = ImageCaptionDataModule(hard_negatives=["negclip"])
    dm.connect(cased, lambda image: image, lambda image: image)
    assert dm.negative_captions().normalize is open_clip.tokenizer._clean_whitespace
