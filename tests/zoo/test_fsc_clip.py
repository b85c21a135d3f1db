import pytest
import torch

import zoo
from tests.conftest import negative_caption_batch
from zoo.losses import contrastive_loss


def _batch(model):
    captions = ["a red circle left of a blue square", "a green star", "two yellow crosses"]
    negatives = [["a blue circle left of a red square", "red a circle"], [None, None], ["crosses two yellow", None]]
    return negative_caption_batch(model, captions, negatives)


def test_zero_weights_give_exactly_the_clip_loss(tiny_cfg):
    torch.manual_seed(0)
    model = zoo.FSCCLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg}, lambda_global=0.0, lambda_local=0.0)
    batch = _batch(model)
    terms = model.losses(batch)
    total = sum(terms.values())
    clip = contrastive_loss(
        model.encode_image(batch["image"]), model.encode_text(batch["text"]), model.backbone.logit_scale
    )["contrastive_loss"]
    assert total.item() == clip.item()


def test_terms_and_switches(tiny_cfg):
    torch.manual_seed(0)
    model = zoo.FSCCLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg})
    terms = model.losses(_batch(model))
    assert set(terms) == {"contrastive_loss", "global_hn_loss", "local_hn_loss"}
    assert all(torch.isfinite(v) and v > 0 for v in terms.values())
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in model.backbone.model.visual.transformer.parameters())
    model = zoo.FSCCLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg}, use_local=False)
    assert set(model.losses(_batch(model))) == {"contrastive_loss", "global_hn_loss"}


def test_local_loss_trains_both_towers(tiny_cfg):
    torch.manual_seed(0)
    model = zoo.FSCCLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg}, use_global=False)
    batch = _batch(model)
    model.losses(batch)["local_hn_loss"].backward()
    # the local loss trains both towers (patch tokens and word tokens)
    assert model.backbone.model.visual.conv1.weight.grad.abs().sum() > 0
    assert model.backbone.model.token_embedding.weight.grad.abs().sum() > 0


def test_needs_negatives(tiny_cfg):
    model = zoo.FSCCLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg})
    batch = _batch(model)
    del batch["negatives"]
    with pytest.raises(ValueError, match="hard_negatives"):
        model.losses(batch)
