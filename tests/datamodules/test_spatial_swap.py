"""The ``spatial_swap`` hard negative (``datamodules.text_augment.spatial``): its table, casing, word boundaries,
and its use by name in NegCLIP's data (``NegativeCaptions``, ``ImageCaptionDataModule(hard_negatives=...)``)."""

from __future__ import annotations

import random

import pytest
import torch

from datamodules import ImageCaptionDataModule, ShapesWorldConfig
from datamodules.hard_negatives import NegativeCaptions
from datamodules.text_augment import GENERATORS, HardNegativeEngine, SpatialSwap, spatial_swap

SWAPPED = [
    # the table, each direction
    ("a red square to the left of a blue circle", "a red square to the right of a blue circle"),
    ("a red square to the right of a blue circle", "a red square to the left of a blue circle"),
    ("the cup on the left", "the cup on the right"),
    ("the leftmost chair", "the rightmost chair"),
    ("the rightmost chair", "the leftmost chair"),
    ("a star above a square", "a star below a square"),
    ("a star below a square", "a star above a square"),
    ("a cat on top of a box", "a cat under a box"),
    ("a cat under a table", "a cat on top of a table"),
    ("a dog in front of a car", "a dog behind a car"),
    ("a dog behind a car", "a dog in front of a car"),
    # both directions in one caption: swapped at once, not one undoing the other
    ("a cat left of a dog and right of a cup", "a cat right of a dog and left of a cup"),
    ("a star above a square, below a circle", "a star below a square, above a circle"),
    ("a box under a cat on top of a mat", "a box on top of a cat under a mat"),
    (
        "A large cross is in the top left. A small star is in the bottom right.",
        "A large cross is in the top right. A small star is in the bottom left.",
    ),
    # casing carried over
    ("Left of the tree is a dog", "Right of the tree is a dog"),
    ("A DOG ON THE LEFT", "A DOG ON THE RIGHT"),
    ("Behind the car stands a man", "In front of the car stands a man"),
    ("On top of the hill", "Under the hill"),
    ("UNDER THE BRIDGE", "ON TOP OF THE BRIDGE"),
    # whole words only; a phrase's inner whitespace may be any run; hyphens are word boundaries
    ("leftover pizza on the right", "leftover pizza on the left"),
    ("thunder above the copyright sign", "thunder below the copyright sign"),
    ("a dog in  front of\na car", "a dog behind\na car"),  # the text around a match stays as it is
    ("a left-handed player", "a right-handed player"),
    # "right" as an intensifier stays; as a side it swaps
    ("a dog right next to a cat on the left", "a dog right next to a cat on the right"),
    ("the lamp on the right next to a sofa", "the lamp on the left next to a sofa"),
]
NOTHING = ["a dog on a couch", "leftovers in a box", "a bright light underneath a thundercloud", "", "right now"]


@pytest.mark.parametrize(("caption", "expected"), SWAPPED)
def test_table_cases(caption, expected):
    assert spatial_swap(caption) == expected


@pytest.mark.parametrize("caption", NOTHING)
def test_no_spatial_word_no_negative(caption):
    assert spatial_swap(caption) is None
    assert SpatialSwap()(caption, random.Random(0)) is None


@pytest.mark.parametrize(("caption", "expected"), [c for c in SWAPPED if "  " not in c[0] and "\n" not in c[0]])
def test_swapping_twice_gives_the_caption_back(caption, expected):
    assert spatial_swap(expected) == caption


def test_registered_by_name_and_used_by_negative_captions():
    assert GENERATORS["spatial_swap"] is SpatialSwap
    negatives = NegativeCaptions(["spatial_swap"], seed=3)
    caption = "a small blue square to the right of a small green hexagon"
    for index, epoch in [(0, 0), (5, 2)]:  # a rule, not a draw: the same whatever the sample and epoch
        assert negatives({}, caption, index, epoch) == ["a small blue square to the left of a small green hexagon"]
    assert negatives({}, "a large red cross", 0, 0) == [None]


class _NoParsing:
    """An analyzer that fails when asked to parse: spatial_swap is a word table, it must not need spaCy."""

    def warm(self, captions, batch_size=256):
        raise AssertionError("spatial_swap alone must not parse captions")

    def __call__(self, caption):
        raise AssertionError("spatial_swap must not parse captions")


def test_warming_an_engine_of_spatial_swap_parses_nothing():
    engine = HardNegativeEngine(["spatial_swap"], analyzer=_NoParsing())
    assert engine.warm(["a cat on the left", "a dog above a box"]) == 0
    assert engine("a cat on the left", 0, 0) == ["a cat on the right"]


def test_negclip_batches_of_shapesworld_carry_the_swapped_captions():
    to_tensor = lambda image: torch.zeros(3, 4, 4)  # noqa: E731
    dm = ImageCaptionDataModule(
        batch_size=8,
        num_workers=0,
        hard_negatives=["spatial_swap"],
        shapesworld=ShapesWorldConfig(n_train=16, image_size=16),
    )
    dm.connect(tokenizer=lambda texts: torch.tensor([[len(t)] for t in texts]), train_transform=to_tensor,
               eval_transform=to_tensor)  # fmt: skip
    batch = next(iter(dm.train_dataloader()))
    assert batch["negatives"].shape == (8, 1, 1)
    expected = [[spatial_swap(caption)] for caption in batch["caption"]]
    assert batch["negative_captions"] == expected
    assert batch["negative_mask"][:, 0].tolist() == [e[0] is not None for e in expected]
    assert batch["negative_mask"].any() and (~batch["negative_mask"]).any()
    assert batch["negatives"][batch["negative_mask"]].flatten().tolist() == [len(e[0]) for e in expected if e[0]]
