"""The public encoders take what users have: PIL images (the model's own eval transform applied),
tensors, one string or a list of strings; anything else is refused by name."""

import pytest
import torch
from PIL import Image

from datamodules.shapesworld import generate_sample


def _pictures(n=2):
    return [generate_sample(i, split="test", seed=0, image_size=40)["image"] for i in range(n)]


def test_pil_images_go_through_the_models_eval_transform(tiny_clip):
    model = tiny_clip.eval()
    pictures = _pictures()
    transform = model.data_transforms()["eval_transform"]
    tensors = torch.stack([transform(p) for p in pictures])
    with torch.no_grad():
        expected = model.encode_image(tensors)
        assert torch.equal(model.encode_image(pictures), expected)
        one = model.encode_image(pictures[0])  # one image, not a list: a batch of 1
        assert torch.allclose(one, expected[:1], atol=1e-6)  # one image, not a list
        assert torch.equal(model.encode_image([pictures[0], tensors[1]]), expected)  # mixed
        assert torch.allclose(model.encode_image(tensors[0]), expected[:1], atol=1e-6)  # one [3, H, W] tensor
        grey = pictures[0].convert("L")  # converted to RGB as the data module's readers do
        assert model.encode_image(grey).shape == expected[:1].shape


def test_one_string_or_a_list_of_strings(tiny_clip):
    model = tiny_clip.eval()
    with torch.no_grad():
        listed = model.encode_text(["a red square", "two blue circles"])
        assert torch.allclose(model.encode_text("a red square"), listed[:1], atol=1e-6)
        assert torch.equal(model.encode_text(("a red square", "two blue circles")), listed)
        tokens = model.backbone.tokenize(["a red square"])
        assert torch.allclose(model.encode_text(tokens), listed[:1], atol=1e-6)
        scores = model.similarity(_pictures(), "a red square")
    assert scores.shape == (2, 1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.encode_image("picture.png"), "PIL image"),
        (lambda m: m.encode_image([]), "non-empty"),
        (lambda m: m.encode_image([Image.new("RGB", (8, 8)), "x"]), "image 1"),
        (lambda m: m.encode_image(torch.zeros(3, 8)), r"\[3, H, W\]"),
        (lambda m: m.encode_text(["a", 3]), "strings"),
        (lambda m: m.encode_text(7), "int"),
    ],
)
def test_anything_else_is_refused_by_name(tiny_clip, call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call(tiny_clip)
