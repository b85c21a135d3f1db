import pytest
import torch

import zoo
from tests.conftest import negative_caption_batch
from zoo.losses import negclip_loss


@pytest.fixture
def negclip(tiny_cfg):
    torch.manual_seed(0)
    return zoo.NegCLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg})


def _batch(model):
    captions = ["a red circle left of a blue square", "a green star", "two yellow crosses"]
    negatives = [["a blue circle left of a red square", None], [None, None], ["two crosses yellow", "a cross"]]
    return negative_caption_batch(model, captions, negatives)


def test_loss_is_negclip_over_encoded_valid_negatives(negclip):
    batch = _batch(negclip)
    loss = negclip.losses(batch)["negclip_loss"]
    encoded = negclip.backbone.encode_text(batch["negatives"].flatten(0, 1)).view(3, 2, -1)
    expected = negclip_loss(
        negclip.encode_image(batch["image"]),
        negclip.encode_text(batch["text"]),
        encoded,
        batch["negative_mask"],
        negclip.backbone.logit_scale,
    )["negclip_loss"]
    assert torch.allclose(loss, expected, atol=1e-6)
    features = negclip.encode_negatives(batch["negatives"], batch["negative_mask"])
    assert torch.all(features[~batch["negative_mask"]] == 0)
    assert torch.allclose(features[batch["negative_mask"]], encoded[batch["negative_mask"]], atol=1e-6)


def test_negatives_push_gradients_into_the_text_tower(negclip):
    batch = _batch(negclip)
    with_negatives = negclip.losses(batch)["negclip_loss"]
    batch["negative_mask"] = torch.zeros_like(batch["negative_mask"])
    without = negclip.losses(batch)["negclip_loss"]
    assert with_negatives > without  # extra candidates in the image->text softmax can only raise the loss


def test_missing_negatives_are_explained(negclip):
    batch = _batch(negclip)
    del batch["negatives"]
    with pytest.raises(ValueError, match="hard_negatives"):
        negclip.losses(batch)


def test_hparams_round_trip(negclip):
    assert negclip.hparams.mask_same_image is True
    assert negclip.hparams.backbone["model_cfg"]["embed_dim"] == 32
